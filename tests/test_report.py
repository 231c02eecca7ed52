"""report.html of a tiny real run (a 3-epoch teacher on a synthetic cache, evaluate), of a run that
stopped part way, of the KG chain on the PrimeKG fixture and of a sweep; the scores evaluate keeps
for the curves; ``compare``."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from jobs.__main__ import main
from jobs.sweep import write_sweep
from jobs.track import compare, report
from pipeline.can.scores import CLASSIFIER, read_scores
from pipeline.config import load_profile
from pipeline.runner import run_stage
from pipeline.runs import RunDir
from tests.kg_helpers import single_thread  # noqa: F401  (autouse fixture)
from tests.report_helpers import copy_run, decode_png, parse_report, tiny_can_run

SPLITS = ["val", "test_01_known", "test_02_unknown"]


@pytest.fixture(scope="module")
def can_run(tmp_path_factory) -> RunDir:
    return tiny_can_run(tmp_path_factory.mktemp("report"))


def test_evaluate_keeps_the_scores_that_reproduce_its_confusion_matrices(can_run):
    (scores,) = read_scores(can_run.path / "evaluate")
    assert scores.model == "teacher" and scores.kind == CLASSIFIER and scores.threshold == 0.5
    assert list(scores.splits) == SPLITS
    rows = {r["split"]: r for r in json.loads((can_run.path / "evaluate" / "metrics.json").read_text())["rows"]}
    for split, (score, label) in scores.splits.items():
        assert score.dtype == np.float32 and ((0 <= score) & (score <= 1)).all()
        predicted = (score > 0.5).astype(int)
        matrix = [[int(((label == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]
        assert matrix == rows[split]["confusion"], split


def test_report_embeds_every_figure_and_fills_every_table(can_run, capsys):
    assert main(["report", "--run", str(can_run.path)]) == 0
    path = can_run.path / "report.html"
    assert capsys.readouterr().out.strip() == f"report: {path}"
    page = parse_report(path)
    assert page.scripts == 0 and page.other_sources == []   # self-contained: nothing to fetch
    assert len(page.tables) >= 3 and all(len(rows) > 0 for rows in page.tables)
    pictures = {alt: decode_png(data) for alt, data in page.images}
    assert all(p.ndim == 3 and p.shape[0] > 100 and p.shape[1] > 100 for p in pictures.values())
    captions = " ".join(pictures)
    for split in SPLITS:
        assert f"{split}: ROC" in captions
    assert "teacher: train loss" in captions and "teacher (classifier)" in captions and "teacher: confusion" in captions
    stages = {row[0]: row for row in page.tables[0]}
    assert list(stages) == ["preprocess", "teacher", "evaluate"] and {r[1] for r in stages.values()} == {"done"}
    # the same figures sit in the stage folders
    evaluate = can_run.path / "evaluate"
    assert (can_run.path / "teacher" / "curves.png").exists()
    assert {p.name for p in evaluate.glob("*.png")} == {*(f"roc_pr_{s}.png" for s in SPLITS), "hist_teacher.png",
                                                        "confusion_teacher.png"}


def test_drawing_a_report_again_writes_the_same_bytes(can_run):
    report(can_run.path)
    files = sorted(can_run.path.rglob("*.png")) + [can_run.path / "report.html"]
    before = {p: p.read_bytes() for p in files}
    report(can_run.path)
    assert {p: p.read_bytes() for p in files} == before


def test_report_of_a_run_that_stopped_part_way(can_run, tmp_path):
    run = copy_run(can_run, tmp_path / "runs", "stopped")
    shutil.rmtree(run.path / "evaluate")
    run.write_status("evaluate", state="failed", started=1.0, ended=2.0, error="ValueError: broken input")
    (path,) = report(run.path)
    page = parse_report(path)
    stages = {row[0]: row for row in page.tables[0]}
    assert stages["evaluate"][1] == "failed" and "broken input" in stages["evaluate"][-1]
    assert "evaluate has not written evaluate/metrics.json" in path.read_text()
    assert any("teacher: train loss" in alt for alt, _ in page.images)
    assert all(len(rows) > 0 for rows in page.tables)


def test_sweep_report_gives_mean_and_std_over_seeds(can_run, tmp_path):
    runs = tmp_path / "runs"
    members = [copy_run(can_run, runs, f"s-seed{i}", f1_shift=-0.1 * i) for i in range(3)]
    sweep = runs / "_sweeps" / "s"
    sweep.mkdir(parents=True)
    write_sweep(sweep, members, [])
    paths = report(sweep)
    assert paths[:3] == [m.path / "report.html" for m in members] and paths[3] == sweep / "report.html"
    page = parse_report(sweep / "report.html")
    assert all(len(rows) > 0 for rows in page.tables) and len(page.images) == 1
    decode_png(page.images[0][1])
    summary = {row[0]: row[1] for row in page.tables[1]}
    f1 = json.loads((can_run.path / "evaluate" / "metrics.json").read_text())["rows"][1]["f1"]
    values = np.array([f1, f1 - 0.1, f1 - 0.2])
    assert summary["teacher/test_01_known/f1"] == f"{values.mean():.4f} ± {values.std(ddof=1):.4f} (n=3)"


def test_compare_puts_the_headline_metrics_of_runs_side_by_side(can_run, tmp_path):
    a = copy_run(can_run, tmp_path / "runs", "a")
    b = copy_run(can_run, tmp_path / "runs", "b", f1_shift=-0.25)
    lines = compare([str(a.path), str(b.path)]).splitlines()
    assert lines[0] == "| metric | local/a | local/b |" and lines[2] == "| state | done | done |"
    row = next(line for line in lines if line.startswith("| teacher/test_02_unknown/f1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) - float(cells[2]) == pytest.approx(0.25, abs=1e-4)
    assert len(lines) == 3 + len(SPLITS)


def test_kg_report_has_link_prediction_per_edge_type_and_the_pca_plot(tmp_path):
    tiny = ["train.epochs=2", "train.threads=1", "kg.max_seed_edges=128", "kg.fanouts=[4,2]",
            "kg.val_edges_per_type=50", "kg.eval_negatives=20", "kg.report_sample=200", "kg_model.teacher.hidden=16",
            "kg_model.teacher.out=16", "kg_model.teacher.heads=2", "stages=[preprocess,teacher,export]"]
    profile = load_profile("primekg", [*tiny, f"data.cache_dir={tmp_path / 'cache'}"])
    run = RunDir.create(profile, root=tmp_path / "runs", run_id="r")
    for stage in profile.stages:
        run_stage(run.path, stage)
    (path,) = report(run.path)
    page = parse_report(path)
    assert all(len(rows) > 0 for rows in page.tables)
    alts = [alt for alt, data in page.images if decode_png(data) is not None]
    assert any("teacher: 2-D PCA" in alt for alt in alts) and any("per edge type" in alt for alt in alts)
    links = json.loads((run.path / "export" / "teacher" / "report.json").read_text())["link_prediction"]
    edge_rows = next(rows for rows in page.tables if rows[0][0] in links)
    assert [r[0] for r in edge_rows] == [*links, "mean over edge types"]
    assert (run.path / "export" / "teacher" / "link_prediction.png").exists()
    assert any(alt.startswith("teacher: train loss") for alt in alts)


def test_ui_without_a_store_says_how_to_fill_one(tmp_path, capsys):
    assert main(["ui", "--store", str(tmp_path / "mlflow.db")]) == 2
    err = capsys.readouterr().err
    assert "no tracking store" in err and "make track RUN=" in err

