"""Evaluate stage: score every trained classifier on the validation split and each test scenario.

Each test folder is a scenario (known/unknown vehicle x known/unknown attack) and is scored on
its own, because a mean over scenarios hides exactly the generalisation gap they exist to show.
The result is a table of (model, split) rows; students and curriculum models add rows by being
listed in ``CLASSIFIER_STAGES`` once their stages exist.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from sklearn import metrics as skm
from torch import nn

from pipeline import io
from pipeline.data.cache import GraphSplit
from pipeline.data.loader import GraphLoader
from pipeline.train import load_model, predict

CLASSIFIER_STAGES = ("teacher", "student", "curriculum")
"""Upstream stages whose done record names a ``best_checkpoint`` of a graph classifier."""
COLUMNS = ("graphs", "attacks", "accuracy", "precision", "recall", "f1", "balanced_accuracy")


def run(ctx) -> dict[str, Any]:
    cache_dir = Path(ctx.upstream["preprocess"]["cache_dir"])
    manifest = io.read_json(cache_dir / "manifest.json")
    splits = ["val", *manifest["scenarios"]]
    batch_size = ctx.profile.train.batch_size * 4
    rows = []
    for name, checkpoint in models_to_score(ctx.upstream).items():
        model = load_model(checkpoint, ctx.device)
        for split_name in splits:
            split = GraphSplit.open(cache_dir / manifest["splits"][split_name]["file"])
            row = {"model": name, "split": split_name, **evaluate_model(model, split, batch_size=batch_size)}
            ctx.log.info("%s on %s: %d graphs, %d attacks, f1 %.4f, balanced accuracy %.4f", name, split_name,
                         row["graphs"], row["attacks"], row["f1"], row["balanced_accuracy"])
            rows.append(row)
    io.write_json(ctx.dir / "metrics.json", {"rows": rows, "scenarios": manifest["scenarios"]})
    table = ctx.dir / "metrics.md"
    io.write_text(table, markdown_table(rows))
    ctx.log.info("metrics table:\n%s", table.read_text())
    return {
        "metrics_table": str(table),
        "scenarios": {r["split"]: r["f1"] for r in rows if r["model"] == "teacher" and r["split"] != "val"},
    }


def models_to_score(upstream: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Model name -> best checkpoint, for every classifier stage this run has finished."""
    return {stage: upstream[stage]["best_checkpoint"] for stage in CLASSIFIER_STAGES
            if stage in upstream and upstream[stage].get("best_checkpoint")}


def evaluate_model(model: nn.Module, split: GraphSplit, batch_size: int = 256) -> dict[str, Any]:
    """Scores of ``model`` on every graph of ``split``, plus its size and attack count."""
    logits, y = predict(model, GraphLoader(split, batch_size))
    return {"graphs": int(y.numel()), "attacks": int(y.sum()), **classification_metrics(y, logits.argmax(-1))}


def classification_metrics(y_true: torch.Tensor, y_pred: torch.Tensor) -> dict[str, Any]:
    """Binary scores with attack = positive class; defined (0, not a warning) on one-class splits."""
    t, p = y_true.cpu().numpy(), y_pred.cpu().numpy()
    if t.size == 0:
        nan = float("nan")
        return {"accuracy": nan, "precision": nan, "recall": nan, "f1": nan, "balanced_accuracy": nan,
                "confusion": [[0, 0], [0, 0]]}
    with warnings.catch_warnings():
        # A scenario may hold one class only; sklearn then warns about balanced accuracy.
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(skm.balanced_accuracy_score(t, p))
    return {
        "accuracy": float(skm.accuracy_score(t, p)),
        "precision": float(skm.precision_score(t, p, zero_division=0)),
        "recall": float(skm.recall_score(t, p, zero_division=0)),
        "f1": float(skm.f1_score(t, p, zero_division=0)),
        "balanced_accuracy": balanced,
        "confusion": skm.confusion_matrix(t, p, labels=[0, 1]).tolist(),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One row per (model, split); the confusion matrix as TN/FP/FN/TP."""
    head = ["model", "split", *COLUMNS, "TN", "FP", "FN", "TP"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        (tn, fp), (fn, tp) = r["confusion"]
        cells = [r["model"], r["split"], str(r["graphs"]), str(r["attacks"]),
                 *(f"{r[k]:.4f}" for k in COLUMNS[2:]), str(tn), str(fp), str(fn), str(tp)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
