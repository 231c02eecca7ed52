"""The one training loop warns once when validation cannot rank epochs (no attack windows, a NaN
metric, a metric that never moves), in the stage log and in ``make status``; evaluation reports a
split without attack windows as "F1 undefined", never as F1 0."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from jobs.status import status_report
from pipeline import io
from pipeline.can.classifier import cross_entropy_loss
from pipeline.can.data.cache import GraphSplit, save_split
from pipeline.can.data.loader import GraphLoader
from pipeline.can.models.gat import GATWithJK
from pipeline.runner import run_stage
from pipeline.stage_warnings import stage_warnings
from pipeline.train import Selection, Trainer
from tests.helpers import (
    EDGE_FEATURES,
    NODE_FEATURES,
    VOCAB,
    run_with_cache,
    synthetic_split,
    tiny_profile,
    write_synthetic_cache,
)

# -- the training loop ---------------------------------------------------------------------------

def cache_with_attack_free(root: Path, name: str, graphs: int) -> Path:
    """A synthetic cache whose split ``name`` holds ``graphs`` graphs, none of them an attack."""
    write_synthetic_cache(root)
    save_split(synthetic_split(graphs, attack_rate=0.0, seed=5), root / f"{name}.pt")
    manifest = io.read_json(root / "manifest.json")
    manifest["splits"][name].update(graphs=graphs, labels={"0": graphs, "1": 0})
    io.write_json(root / "manifest.json", manifest)
    return root


def test_undefined_selection_metric_warns_once_with_profile_key(tmp_path):
    cache = cache_with_attack_free(tmp_path / "cache", "val", 40)
    run = run_with_cache(tmp_path, tiny_profile(["train.epochs=3", "train.patience=5"]), cache)
    teacher = run_stage(run.path, "teacher")
    assert teacher["epochs_run"] == 3
    log = (run.path / "teacher" / "log").read_text()
    assert log.count("validation cannot judge the model") == 1
    assert "validation holds no attack windows (40 graphs, all normal)" in log and "data.val_fraction" in log
    (warning,) = stage_warnings(run.path / "teacher")
    assert warning["profile_key"] == "data.val_fraction" and warning["where"] == ""
    report = status_report(run.path)
    assert f"warning teacher: {warning['message']}" in report

    # the stage run again (its fit resumes after the last epoch) neither warns again nor drops the warning
    run.clear_done("teacher")
    run_stage(run.path, "teacher")
    assert (run.path / "teacher" / "log").read_text().count("validation cannot judge the model") == 1
    assert stage_warnings(run.path / "teacher") == [warning]


def _fit_with_metrics(tmp_path: Path, values: list[dict[str, float]], selection: Selection,
                      caplog) -> list[logging.LogRecord]:
    """Fit the real loop for len(values) epochs with validate_fn returning ``values`` epoch by epoch."""
    profile = tiny_profile([f"train.epochs={len(values)}", f"train.patience={len(values) + 1}"])
    train, val = GraphSplit(synthetic_split(40, seed=1)), GraphSplit(synthetic_split(20, seed=2))
    model = GATWithJK(num_ids=len(VOCAB) + 1, node_features=len(NODE_FEATURES), edge_features=len(EDGE_FEATURES),
                      **profile.model.model_dump())
    epochs = iter(values)
    log = logging.getLogger("test.validation_choice")
    trainer = Trainer(model, cross_entropy_loss(None), GraphLoader(train, 16, shuffle=True), GraphLoader(val, 64),
                      lambda m, loader: next(epochs), profile.train, tmp_path, log, selection=selection,
                      resume_key="k", progress=False)
    with caplog.at_level(logging.WARNING, logger=log.name):
        trainer.fit()
    return [r for r in caplog.records if "validation cannot judge the model" in r.getMessage()]


def test_nan_selection_metric_warns_once(tmp_path, caplog):
    warned = _fit_with_metrics(tmp_path, [{"auroc": math.nan}] * 3, Selection("auroc", "max"), caplog)
    assert len(warned) == 1 and "auroc is nan on validation" in warned[0].getMessage()
    assert stage_warnings(tmp_path)[0]["profile_key"] == "data.val_fraction"


def test_constant_selection_metric_without_tie_metric_warns_when_the_fit_ends(tmp_path, caplog):
    warned = _fit_with_metrics(tmp_path, [{"f1": 0.5}] * 3, Selection("f1", "max"), caplog)
    assert len(warned) == 1 and "f1 was 0.5 in every one of 3 epochs" in warned[0].getMessage()


def test_moving_selection_metric_does_not_warn(tmp_path, caplog):
    assert _fit_with_metrics(tmp_path, [{"f1": 0.5}, {"f1": 0.6}, {"f1": 0.6}], Selection("f1", "max"), caplog) == []
    assert stage_warnings(tmp_path) == []


# -- evaluation ----------------------------------------------------------------------------------

def test_scenario_without_attacks_reports_f1_undefined(tmp_path):
    cache = cache_with_attack_free(tmp_path / "cache", "test_02_unknown", 30)
    run = run_with_cache(tmp_path, tiny_profile(["train.epochs=2"]), cache)
    run_stage(run.path, "teacher")
    result = run_stage(run.path, "evaluate")
    assert result["scenarios"]["test_02_unknown"] is None and result["scenarios"]["test_01_known"] is not None
    metrics = json.loads((run.path / "evaluate" / "metrics.json").read_text())
    rows = {(r["model"], r["split"]): r for r in metrics["rows"]}
    quiet = rows["teacher", "test_02_unknown"]
    assert quiet["attacks"] == 0 and quiet["f1"] is None and quiet["recall"] is None
    assert quiet["note"] == "no attack windows: F1 undefined"
    assert sum(quiet["confusion"][0]) == 30 and 0.0 <= quiet["accuracy"] <= 1.0
    assert rows["teacher", "test_01_known"]["f1"] is not None and "note" not in rows["teacher", "test_01_known"]
    table = (run.path / "evaluate" / "metrics.md").read_text()
    assert "| teacher | test_02_unknown | 30 | 0 |" in table and "| undefined | undefined | undefined |" in table
    assert "- teacher on test_02_unknown: no attack windows: F1 undefined" in table
    assert "f1 undefined (no attack windows)" in (run.path / "evaluate" / "log").read_text()
