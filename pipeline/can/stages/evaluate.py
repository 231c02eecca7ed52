"""Evaluate stage: score every trained classifier on the validation split and each test scenario.

Each test folder is a scenario (known/unknown vehicle x known/unknown attack) and is scored on
its own, because a mean over scenarios hides exactly the generalisation gap they exist to show.
The result is a table of (model, split) rows: every classifier an upstream stage names (the
teacher, the KD student, the same student without KD, the curriculum student) and, below it, every
anomaly detector (the VGAE and its student, thresholded at the value chosen on validation). Every
row holds ``pipeline.can.metrics.split_metrics``: AUROC and average precision of a continuous attack
score (a classifier's softmax probability of attack, a detector's reconstruction error), MCC,
balanced accuracy and F1 at the operating point (argmax for a classifier), the split's prevalence,
the F1 of calling every window an attack and the oracle F1 (best over all thresholds on the split's
own labels, never used to choose anything); ``metrics.md`` marks a row whose F1 is within 0.03 of
that trivial F1 (``pipeline.can.metrics_table``). Each model also gets its parameter count and its
CPU inference latency per 1,000 graphs, so accuracy is read next to what it costs. Every model's
per-window scores are kept in ``scores/<model>.npz`` (``pipeline.can.scores``), for the report's curves.
When the chain fitted a fusion (stage ``fusion``), its model is applied to the scores of its inputs
computed here and scored like a detector at its validation threshold: the ``fusion_rows`` of
``metrics.json`` and their own table in ``metrics.md``.

A split without attack windows (a scenario whose attacks remove messages, so no message is
labelled) has no positives: recall and F1 are 0/0 there and precision can only count false alarms.
Its row says "no attack windows: F1 undefined" and holds null for them (and for every other score
of the attack class: AUROC, AP, MCC, trivial and oracle F1), never a 0 that reads like a failed
detector; accuracy and the false-positive count still describe it. Any other undefined score (the
AUROC of a split without normal windows) is null too.

With ``evaluate.score_normalisation`` on (``median_mad`` or ``warmup``), every model is scored a second
time, as ``<model>+norm`` (a classifier on its logit margin, a detector on its error, each under its
own table), on its scores standardised per capture (a window's source file, recorded in
the cache; ``pipeline.can.normalise``) against that capture's own scores or its first windows; val is
normalised against itself and the threshold is chosen again on it, as the autoencoder stage chooses it.
The normalisation reads no label but is transductive; its rows sit under the model's own, and the
note in ``metrics.md`` says so. They get no ``scores/`` file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from pipeline import io
from pipeline.can.data.cache import GraphSplit
from pipeline.can.data.loader import VALIDATION_GRAPHS_FACTOR, GraphLoader, validation_loader
from pipeline.can.detector import choose_threshold
from pipeline.can.inference import cpu_latency_ms_per_1k, inference_node_cap
from pipeline.can.fusion import FusionModel
from pipeline.can.metrics import (
    UNDEFINED_WITHOUT_ATTACKS,
    anomaly_scores,
    probability_of_attack,
    split_metrics,
)
from pipeline.can.metrics_table import ID_AGNOSTIC_NOTE, classifier_table, detector_table, fusion_table
from pipeline.can.normalise import normalise_scores, warmup_windows
from pipeline.can.scores import (
    CLASSIFIER,
    DETECTOR,
    FUSION,
    ModelScores,
    detectors_to_score,
    models_to_score,
    write_scores,
)
from pipeline.train import load_model, predict

COST_COLUMNS = ("params", "cpu_ms_per_1k")
NO_ATTACKS = "no attack windows: F1 undefined"
NORMALISED = "+norm"
"""Suffix of a model's rows on its per-capture normalised scores."""


def run(ctx) -> dict[str, Any]:
    cache_dir = Path(ctx.upstream["preprocess"]["cache_dir"])
    manifest = io.read_json(cache_dir / "manifest.json")
    splits = {name: GraphSplit.open(cache_dir / manifest["splits"][name]["file"])
              for name in ["val", *manifest["scenarios"]]}
    batch_size = ctx.profile.train.batch_size * VALIDATION_GRAPHS_FACTOR
    node_cap = inference_node_cap(ctx.upstream)
    ctx.log.info("evaluate: batches of up to %d graphs and %s nodes", batch_size,
                 node_cap if node_cap is not None else "any number of")

    def loader(split: GraphSplit) -> GraphLoader:
        return validation_loader(split, ctx.profile.train.batch_size, node_cap)

    normalisation = ctx.profile.evaluate.score_normalisation
    windows = {name: (split.t["source"].numpy(), split.t["start_row"].numpy()) for name, split in splits.items()}

    def normalised(name: str, scored: dict[str, Scored], cost: dict[str, Any]) -> list[dict[str, Any]]:
        """``<name>+norm`` rows when score normalisation is on (none otherwise), logged as they come."""
        if normalisation == "none":
            return []
        out = normalised_rows(name, scored, windows, normalisation, ctx.profile.evaluate.warmup_windows)
        for row in out:
            ctx.log.info("%s on %s: AUROC %s, f1 %s at threshold %.4g", row["model"], row["split"],
                         _score_text(row, "auroc"), _score_text(row, "f1"), row["threshold"])
        return [{**row, **cost} for row in out]

    rows, normalised_classifier_rows, all_scored = [], [], {}
    for name, checkpoint in models_to_score(ctx.upstream).items():
        model = load_model(checkpoint, ctx.device)
        cost = model_cost(checkpoint, splits["val"], batch_size, _classify)
        scored, margins = {}, {}
        for split_name, split in splits.items():
            metrics, scored[split_name], margins[split_name] = evaluate_model(model, loader(split))
            row = {"model": name, "split": split_name, **metrics, **cost}
            ctx.log.info("%s on %s: %d graphs, %d attacks, AUROC %s, f1 %s, trivial f1 %s, balanced accuracy %s",
                         name, split_name, row["graphs"], row["attacks"], _score_text(row, "auroc"),
                         _score_text(row, "f1"), _score_text(row, "trivial_f1"),
                         _score_text(row, "balanced_accuracy"))
            rows.append(row)
        write_scores(ctx.dir, ModelScores(name, CLASSIFIER, 0.5, scored))
        all_scored[name] = scored
        normalised_classifier_rows += normalised(name, margins, cost)
    rows += normalised_classifier_rows
    detector_rows = []
    for name, detector in detectors_to_score(ctx.upstream).items():
        model = load_model(detector["checkpoint"], ctx.device)
        cost = model_cost(detector["checkpoint"], splits["val"], batch_size, _score)
        scored = {}
        for split_name, split in splits.items():
            metrics, scored[split_name] = evaluate_detector(model, loader(split), detector["threshold"])
            row = {"model": name, "split": split_name, "threshold": detector["threshold"], **metrics, **cost}
            ctx.log.info("%s on %s: AUROC %s, f1 %s at threshold %.4g", name, split_name, _score_text(row, "auroc"),
                         _score_text(row, "f1"), detector["threshold"])
            detector_rows.append(row)
        write_scores(ctx.dir, ModelScores(name, DETECTOR, float(detector["threshold"]), scored))
        all_scored[name] = scored
        detector_rows += normalised(name, scored, cost)
    fusion_rows = evaluate_fusion(ctx, all_scored, list(splits))
    io.write_json(ctx.dir / "metrics.json", {"rows": rows, "detector_rows": detector_rows, "fusion_rows": fusion_rows,
                                             "scenarios": manifest["scenarios"]})
    table = ctx.dir / "metrics.md"
    preamble = ID_AGNOSTIC_NOTE if ctx.profile.data.id_agnostic else ""
    io.write_text(table, preamble + classifier_table(rows) + (detector_table(detector_rows) if detector_rows else "")
                  + (fusion_table(fusion_rows) if fusion_rows else ""))
    ctx.log.info("metrics table:\n%s", table.read_text())
    return {
        "metrics_table": str(table),
        "scenarios": {r["split"]: r["f1"] for r in rows if r["model"] == "teacher" and r["split"] != "val"},
        "f1": _by_model(rows, "f1"),
        "auroc": _by_model(detector_rows + fusion_rows, "auroc"),
        "near_trivial": [f"{r['model']}/{r['split']}" for r in rows + detector_rows + fusion_rows if r["near_trivial"]],
        "models": {r["model"]: {k: r[k] for k in COST_COLUMNS} for r in rows + detector_rows
                   if not r.get("normalisation")},
    }


Scored = tuple[np.ndarray, np.ndarray]
"""(per-window score, label) of one split."""


def evaluate_model(model: nn.Module, loader: Iterable) -> tuple[dict[str, Any], Scored, Scored]:
    """Scores of ``model`` on every graph of ``loader``'s split (ranking scores from its probability
    of attack, the rest at its argmax), plus its size and attack count; each window's probability
    of attack with its label; and each window's logit margin (attack - normal, float64) with its label.

    The margin is the log-odds of attack without the saturation of a float32 probability, whose
    logit stops at about +-17 and would put most windows of a confident model on one value: what
    per-capture normalisation needs to tell them apart."""
    logits, y = predict(model, loader)
    attack = probability_of_attack(logits)
    row = undefined_without_attacks({"graphs": int(y.numel()), "attacks": int(y.sum()),
                                     **split_metrics(y, attack, logits.argmax(-1))})
    wide = logits.double()
    return row, (attack.numpy(), y.numpy()), ((wide[:, 1] - wide[:, 0]).numpy(), y.numpy())


def evaluate_detector(model: nn.Module, loader: Iterable, threshold: float) -> tuple[dict[str, Any], Scored]:
    """Scores of the reconstruction error on ``loader``'s split (ranking scores from the error, the
    rest at ``threshold``); and each window's reconstruction error with its label."""
    scores, y = anomaly_scores(model, loader)
    return thresholded_row(y.numpy(), scores.numpy(), threshold), (scores.numpy(), y.numpy())


def thresholded_row(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Ranking scores from ``scores``, the rest with a window called an attack at ``threshold`` or above."""
    return undefined_without_attacks({"graphs": int(y.size), "attacks": int(y.sum()),
                                      **split_metrics(y, scores, (scores >= threshold).astype(np.int64))})


Windows = tuple[np.ndarray, np.ndarray]
"""(source file, start row) of each window of one split, in the split's order."""


def normalise_split_scores(scored: dict[str, Scored], windows: dict[str, Windows], method: str,
                           warmup: int) -> dict[str, Scored]:
    """Each split's scores normalised per capture (``pipeline.can.normalise``), labels passed through
    untouched: only the scores and the windows' source and start row reach the normalisation."""
    out = {}
    for split, (scores, y) in scored.items():
        source, start = windows[split]
        mask = warmup_windows(source, start, warmup) if method == "warmup" else None
        out[split] = (normalise_scores(scores, source, method, mask), y)
    return out


def normalised_rows(name: str, scored: dict[str, Scored], windows: dict[str, Windows], method: str,
                    warmup: int) -> list[dict[str, Any]]:
    """Rows of model ``name`` on its per-capture normalised scores (``<name>+norm``), at the
    threshold chosen on normalised val as the autoencoder stage chooses it on raw val."""
    normed = normalise_split_scores(scored, windows, method, warmup)
    val_scores, val_y = normed["val"]
    threshold = choose_threshold(torch.from_numpy(np.asarray(val_y)), torch.from_numpy(val_scores))["threshold"]
    return [{"model": name + NORMALISED, "split": split, "threshold": threshold, "normalisation": method,
             **thresholded_row(y, scores, threshold)} for split, (scores, y) in normed.items()]


def evaluate_fusion(ctx, scored: dict[str, dict[str, Scored]], splits: list[str]) -> list[dict[str, Any]]:
    """The fusion stage's model on every split, from the scores of its inputs evaluate has just computed
    (at the threshold chosen on val); no rows when the chain has no fitted fusion."""
    record = ctx.upstream.get("fusion") or {}
    if record.get("skipped"):
        ctx.log.warning("fusion: no rows, it was not fitted (%s)", record["skipped"])
    if not record.get("model"):
        return []
    model = FusionModel.load(Path(record["model"]))
    rows, fused = [], {}
    for split in splits:
        y = scored[next(iter(model.inputs))][split][1]
        fused[split] = (model.probability({name: scored[name][split][0] for name in model.inputs}), y)
        row = {"model": FUSION, "split": split, "threshold": model.threshold, "method": model.method,
               **thresholded_row(y, fused[split][0], model.threshold)}
        ctx.log.info("fusion on %s: AUROC %s, f1 %s at threshold %.4g", split, _score_text(row, "auroc"),
                     _score_text(row, "f1"), model.threshold)
        rows.append(row)
    write_scores(ctx.dir, ModelScores(FUSION, FUSION, model.threshold, fused))
    return rows


def undefined_without_attacks(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every undefined score (NaN) set to None; when its split has no attack window,
    the attack-class scores set to None too and a note saying so."""
    row = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
    if row["graphs"] == 0 or row["attacks"] > 0:
        return row
    return {**row, **{k: None for k in UNDEFINED_WITHOUT_ATTACKS if k in row}, "note": NO_ATTACKS}


def model_cost(checkpoint: str, split: GraphSplit, batch_size: int, forward) -> dict[str, Any]:
    """Parameter count and CPU inference latency per 1,000 graphs (measured on a CPU copy)."""
    model = load_model(checkpoint, "cpu")
    return {"params": sum(p.numel() for p in model.parameters()),
            "cpu_ms_per_1k": round(cpu_latency_ms_per_1k(model, forward, split, batch_size), 2)}


def _score_text(row: dict[str, Any], key: str) -> str:
    if row[key] is not None:
        return f"{row[key]:.4f}"
    return "undefined (no attack windows)" if row.get("note") == NO_ATTACKS else "undefined"


def _classify(model: nn.Module, batch) -> torch.Tensor:
    return model(batch)


def _score(model: nn.Module, batch) -> torch.Tensor:
    return model.score(batch)


def _by_model(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r["model"], {})[r["split"]] = r[key]
    return out
