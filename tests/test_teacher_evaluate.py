"""Teacher and evaluate stages through the runner, on a synthetic cache marked as preprocessed."""
import json

import pytest

from pipeline.can.metrics import classification_metrics
from pipeline.can.metrics_table import LEGEND
from pipeline.can.stages.evaluate import inference_node_cap
from pipeline.runner import StageError, run_stage
from tests.helpers import run_with_cache, tiny_profile, write_synthetic_cache


def test_teacher_then_evaluate(tmp_path):
    cache = write_synthetic_cache(tmp_path / "cache")
    run = run_with_cache(tmp_path, tiny_profile(["train.epochs=5"]), cache)

    teacher = run_stage(run.path, "teacher")
    assert teacher["best_val"]["f1"] > 0.8, teacher
    assert 1 <= teacher["best_epoch"] <= teacher["epochs_run"] <= 5
    assert teacher["params"] > 0
    assert (run.path / "teacher" / "best.pt").exists()
    lines = (run.path / "teacher" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == teacher["epochs_run"]

    result = run_stage(run.path, "evaluate")
    assert set(result["scenarios"]) == {"test_01_known", "test_02_unknown"}
    assert all(f1 > 0.7 for f1 in result["scenarios"].values()), result
    metrics = json.loads((run.path / "evaluate" / "metrics.json").read_text())
    rows = {(r["model"], r["split"]): r for r in metrics["rows"]}
    assert set(rows) == {("teacher", "val"), ("teacher", "test_01_known"), ("teacher", "test_02_unknown")}
    val = rows["teacher", "val"]
    assert val["graphs"] == 80 and sum(map(sum, val["confusion"])) == 80
    assert val["attacks"] == val["confusion"][1][0] + val["confusion"][1][1]
    table = (run.path / "evaluate" / "metrics.md").read_text().splitlines()
    assert table[0].startswith("| model | split | graphs | attacks | prevalence | AUROC | AP | MCC |")
    assert [line.split(" | ")[1] for line in table[2:5]] == ["val", "test_01_known", "test_02_unknown"]
    assert table[5:] == ["", LEGEND]
    assert val["auroc"] is not None and val["oracle_f1"] >= val["f1"] and isinstance(val["near_trivial"], bool)
    assert result["metrics_table"] == str(run.path / "evaluate" / "metrics.md")
    # batches stay under the teacher's planned node cap
    cap = teacher["batch_plan"]["max_nodes"]
    assert f"and {cap} nodes" in (run.path / "evaluate" / "log").read_text()

    # done with the same inputs: a second call is a no-op that returns the same record
    assert run_stage(run.path, "teacher")["best_epoch"] == teacher["best_epoch"]


def test_teacher_needs_preprocess(tmp_path):
    from pipeline.runs import RunDir

    run = RunDir.create(tiny_profile(), root=tmp_path, run_id="r")
    with pytest.raises(StageError, match="preprocess"):
        run_stage(run.path, "teacher")


def test_metrics_on_one_class_split_are_defined():
    import torch

    m = classification_metrics(torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 0]))
    assert m["f1"] == 0.0 and m["accuracy"] == 0.75 and m["confusion"] == [[3, 1], [0, 0]]


def test_inference_node_cap_is_the_smallest_planned_cap():
    upstream = {"preprocess": {"cache_dir": "x"}, "teacher": {"batch_plan": {"graphs": 8, "max_nodes": 900}},
                "autoencoder": {"batch_plan": {"graphs": 8, "max_nodes": 600}}, "student": None}
    assert inference_node_cap(upstream) == 600
    assert inference_node_cap({"preprocess": {"cache_dir": "x"}}) is None
