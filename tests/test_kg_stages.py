"""The knowledge-graph chain through the runner: preprocess -> teacher -> student -> export on the real
PrimeKG fixture, resume, the collapse check, and the stage dispatch."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_profile
from pipeline.kg.cache import SPLITS, KGGraph
from pipeline.kg.inference import layerwise_embeddings
from pipeline.kg.report import link_prediction
from pipeline.runner import run_stage
from pipeline.runs import RunDir
from pipeline.train import load_model
from tests.kg_helpers import single_thread  # noqa: F401  (autouse fixture)

TINY = ["train.epochs=2", "train.threads=1", "kg.max_seed_edges=128", "kg.fanouts=[4,2]",
        "kg_model.teacher.hidden=32", "kg_model.teacher.out=32", "kg_model.teacher.heads=4",
        "kg_model.student.hidden=16", "kg_model.student.out=16"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("kgchain")
    profile = load_profile("primekg", [*TINY, f"data.cache_dir={root / 'cache'}"])
    run = RunDir.create(profile, root=root, run_id="r")
    results = {stage: run_stage(run.path, stage) for stage in profile.stages}
    return run, results


def test_chain_runs_end_to_end_on_the_fixture(chain):
    run, results = chain
    assert results["preprocess"]["nodes"]["drug"] > 0 and results["preprocess"]["edges"]["test"] > 0
    for role in ("teacher", "student"):
        assert results[role]["epochs_run"] == 2
        assert (run.path / role / "best.pt").exists() and (run.path / role / "memory_plan.json").exists()
        assert len((run.path / role / "metrics.jsonl").read_text().splitlines()) == 2
        assert 0 <= results[role]["best_val"]["auc"] <= 1
    assert results["student"]["param_ratio"] < 1
    distill = load_profile("primekg", TINY).distill
    assert results["student"]["distill"] == {"alpha": distill.alpha, "temperature": distill.temperature}
    assert set(results["export"]["models"]) == {"teacher", "student"}


@pytest.mark.parametrize("role, dim", [("teacher", 32), ("student", 16)])
def test_export_files_and_report(chain, role, dim):
    run, _ = chain
    out = run.path / "export" / role
    table = pq.read_table(out / "embeddings.parquet")
    assert table.column_names == ["node_type", "node_id", "node_name", *[f"e{j}" for j in range(dim)]]
    assert table.num_rows == 509
    csv = pd.read_csv(out / "embeddings.csv", nrows=5)
    assert list(csv.columns) == table.column_names
    names = set(table.column("node_name").to_pylist())
    assert "Transthyretin" in names  # names come from kg.csv
    report = json.loads((out / "report.json").read_text())
    geo = report["geometry"]
    assert {"mean_cosine", "pca_components_90", "within_type_cosine", "across_type_cosine"} <= set(geo)
    assert report["link_prediction"] and all({"auc", "mrr", "test_edges"} <= set(m) for m in report["link_prediction"].values())
    assert report["edge_split"]["test_fraction"] == 0.1
    assert (out / "pca.png").exists() and "Held-out link prediction" in (out / "report.md").read_text()


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_export_reads_every_edge_and_scores_links_on_the_training_graph(chain, role):
    run, results = chain
    profile = load_profile("primekg", TINY)
    graph = KGGraph.open(results["preprocess"]["cache_dir"])
    model = load_model(run.path / role / "best.pt")
    chunks = (profile.kg.export_chunk_nodes, profile.kg.export_chunk_edges)
    on_train = layerwise_embeddings(model, graph, *chunks)
    links = link_prediction(on_train, model.rel.detach(), graph, profile.kg.eval_negatives, seed=profile.kg.split_seed)
    report = json.loads((run.path / "export" / role / "report.json").read_text())
    assert report["embedding_edges"] == "all"
    assert report["link_prediction"].keys() == links.keys()
    for edge_type, metrics in links.items():
        assert report["link_prediction"][edge_type] == pytest.approx(metrics)
    every = graph.with_edges(SPLITS)
    model.set_degrees(every.csc)
    on_every = layerwise_embeddings(model, every, *chunks)
    table = pq.read_table(run.path / "export" / role / "embeddings.parquet").to_pandas()
    exported = table[[c for c in table.columns if c.startswith("e") and c[1:].isdigit()]].to_numpy()
    expected = np.concatenate([on_every[t] for t in graph.node_types])
    assert np.allclose(exported, expected, atol=1e-5)
    assert not np.allclose(exported, np.concatenate([on_train[t] for t in graph.node_types]), atol=1e-3)


def test_done_stages_are_not_rerun(chain):
    run, results = chain
    before = (run.path / "teacher" / "best.pt").stat().st_mtime_ns
    again = run_stage(run.path, "teacher")
    assert again["best_epoch"] == results["teacher"]["best_epoch"]
    assert (run.path / "teacher" / "best.pt").stat().st_mtime_ns == before


def test_collapse_fails_the_export_stage_after_writing_reports(chain):
    run, _ = chain
    with pytest.raises(Exception, match="collapsed"):
        run_stage(run.path, "export", ("kg.collapse_min_components=10000",), force=True)
    assert (run.path / "export" / "teacher" / "report.md").exists()
    assert json.loads((run.path / "export" / "status.json").read_text())["state"] == "failed"


def test_can_profiles_do_not_take_the_kg_path():
    from pipeline.can.config import CanProfile as Profile

    assert Profile(name="x").task == "can"
    assert load_profile("primekg").task == "kg"


def test_kg_stages_fix_the_hosts_mmap_threshold(tmp_path, monkeypatch):
    from pipeline import runner

    calls = []
    monkeypatch.setattr(runner, "fix_mmap_threshold", lambda: calls.append(True))
    profile = load_profile("primekg", [*TINY, f"data.cache_dir={tmp_path / 'cache'}"])
    run = RunDir.create(profile, root=tmp_path, run_id="r")
    run_stage(run.path, "preprocess")
    assert calls == [True]


@pytest.mark.parametrize("select_on", ["auc", "mrr"])
def test_the_best_epoch_is_the_one_kg_select_on_names(tmp_path, select_on):
    profile = load_profile("primekg", [*TINY, "train.epochs=4", "train.patience=10", f"kg.select_on={select_on}",
                                       f"data.cache_dir={tmp_path / 'cache'}"])
    run = RunDir.create(profile, root=tmp_path, run_id="r")
    run_stage(run.path, "preprocess")
    result = run_stage(run.path, "teacher")
    epochs = [json.loads(line) for line in (run.path / "teacher" / "metrics.jsonl").read_text().splitlines()]
    values = [e["val"][select_on] for e in epochs]
    assert len(set(values)) > 1   # otherwise any epoch would do
    assert values[result["best_epoch"] - 1] == max(values) == result["best_val"][select_on]


def test_kg_select_on_takes_only_the_metrics_validation_computes():
    with pytest.raises(Exception, match="select_on"):
        load_profile("primekg", ["kg.select_on=hits"])
