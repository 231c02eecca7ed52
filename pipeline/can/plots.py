"""The CAN workload's part of the run report: what the evaluate stage measured, as tables and figures.

* The metrics table of every classifier and detector on validation and on each test scenario
  (``evaluate/metrics.json``), with each split's trivial F1 and the oracle F1 beside the F1.
* Per scenario, ROC and precision-recall curves of every model (``evaluate/roc_pr_<split>.png``),
  from the per-window scores evaluate kept (``pipeline.can.scores``): a scenario without attack
  windows (or without normal ones) has no curve, and the report says so.
* Per model, histograms of its score on normal against attack windows in each split, with its
  decision threshold (``evaluate/hist_<model>.png``), and its confusion matrix per split
  (``evaluate/confusion_<model>.png``).

Final metrics (tracking) are ``<model>/<split>/<metric>``; the headline numbers (``make compare``,
sweeps) are each classifier's F1 and each detector's AUROC per split.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.can.metrics_table import NORMALISED_NOTE
from pipeline.can.scores import DETECTOR, FUSION, ModelScores, read_scores
from pipeline.report.figures import new_figure, save_png
from pipeline.report.html import Image, Note, Section, Table
from pipeline.report.records import RunRecords
from pipeline.report.workload import Metrics, WorkloadReport

SCORES = ("accuracy", "precision", "recall", "f1", "balanced_accuracy", "auroc", "average_precision", "mcc",
          "prevalence", "trivial_f1", "oracle_f1")
COST = ("params", "cpu_ms_per_1k")


def evaluation(records: RunRecords) -> dict[str, Any] | None:
    """evaluate/metrics.json of the run, or None when evaluate has not written it."""
    path = records.path / "evaluate" / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def all_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    return list(data.get("rows", [])) + list(data.get("detector_rows", [])) + list(data.get("fusion_rows", []))


def final_metrics(records: RunRecords) -> dict[str, Metrics]:
    data = evaluation(records)
    if data is None:
        return {}
    out: Metrics = {}
    for row in all_rows(data):
        for key in SCORES:
            if key in row:
                out[f"{row['model']}/{row['split']}/{key}"] = row[key]
        for key in COST:
            if key in row:
                out[f"{row['model']}/{key}"] = row[key]
    return {"evaluate": out}


def headline(records: RunRecords) -> Metrics:
    data = evaluation(records)
    if data is None:
        return {}
    out: Metrics = {f"{r['model']}/{r['split']}/f1": r.get("f1") for r in data.get("rows", [])}
    out.update({f"{r['model']}/{r['split']}/auroc": r.get("auroc") for r in data.get("detector_rows", [])})
    out.update({f"{r['model']}/{r['split']}/f1": r.get("f1") for r in data.get("fusion_rows", [])})
    return out


def sections(records: RunRecords) -> list[Section]:
    data = evaluation(records)
    if data is None:
        return [Section("Evaluation", [Note("evaluate has not written evaluate/metrics.json in this run")])]
    folder = records.path / "evaluate"
    scores = read_scores(folder)
    blocks: list = [metrics_table(data.get("rows", []), "classifiers (argmax of the logits; +norm rows: "
                                                        "threshold chosen on normalised val)"),
                    metrics_table(data.get("detector_rows", []), "anomaly detectors (VGAE reconstruction error; "
                                                                 "threshold chosen on val)")]
    if any(r.get("normalisation") for r in data.get("rows", []) + data.get("detector_rows", [])):
        blocks.append(Note(NORMALISED_NOTE))
    if data.get("fusion_rows"):
        blocks.append(metrics_table(data["fusion_rows"], "fusion (stacked scores fitted on val; threshold chosen on val)"))
    if not scores:
        blocks.append(Note("no per-window scores in evaluate/scores/ (a run evaluated before they were kept): "
                           "no ROC, precision-recall curves or histograms"))
    return [Section("Evaluation", blocks),
            Section("ROC and precision-recall per scenario", curve_blocks(folder, scores)),
            Section("Scores of normal and attack windows", [Image(score_histograms(folder, s), _hist_caption(s))
                                                           for s in scores]),
            Section("Confusion matrices", confusion_blocks(folder, all_rows(data)))]


def metrics_table(rows: list[dict[str, Any]], caption: str) -> Table:
    columns = ("model", "split", "graphs", "attacks", "prevalence", "accuracy", "auroc", "average_precision", "mcc",
               "precision", "recall", "f1", "balanced_accuracy", "trivial_f1", "oracle_f1", "near_trivial", "note")
    body = [tuple(r.get(c) if c in r else None for c in columns) for r in rows]
    return Table(columns, body, caption=caption, empty="none in this run")


def curve_blocks(folder: Path, scores: list[ModelScores]) -> list:
    splits = list(dict.fromkeys(split for s in scores for split in s.splits))
    blocks: list = []
    for split in splits:
        path = roc_pr_figure(folder, split, scores)
        if path is None:
            blocks.append(Note(f"{split}: no curve (the split holds only one class of windows)"))
        else:
            blocks.append(Image(path, f"{split}: ROC (left) and precision-recall (right) of every model"))
    return blocks


def roc_pr_figure(folder: Path, split: str, scores: list[ModelScores]) -> Path | None:
    """One figure per split: a ROC and a precision-recall curve per model; None if no model's
    windows of that split hold both classes."""
    from sklearn import metrics as skm  # a second of import time that tracking and compare never need

    usable = [(s, *s.splits[split]) for s in scores if split in s.splits and _both_classes(s.splits[split][1])]
    if not usable:
        return None
    fig = new_figure(11, 4.2)
    roc_ax, pr_ax = fig.subplots(1, 2)
    for i, (model, score, label) in enumerate(usable):
        style = {"color": f"C{i % 10}", "ls": "--" if model.kind == DETECTOR else "-"}
        fpr, tpr, _ = skm.roc_curve(label, score)
        roc_ax.plot(fpr, tpr, label=f"{model.model} (AUROC {skm.roc_auc_score(label, score):.3f})", **style)
        precision, recall, _ = skm.precision_recall_curve(label, score)
        pr_ax.plot(recall, precision, label=f"{model.model} (AP {skm.average_precision_score(label, score):.3f})",
                   drawstyle="steps-post", **style)
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    roc_ax.set(title=f"ROC, {split}", xlabel="false-positive rate", ylabel="true-positive rate")
    base = float(np.mean(usable[0][2]))
    pr_ax.axhline(base, color="grey", lw=0.8, ls=":", label=f"attack share {base:.2f}")
    pr_ax.set(title=f"precision-recall, {split}", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "lower left")
    return save_png(fig, folder / f"roc_pr_{split}.png")


def score_histograms(folder: Path, scores: ModelScores) -> Path:
    """One panel per split: the model's score on normal windows against attack windows."""
    splits = list(scores.splits)
    fig = new_figure(3.0 * max(len(splits), 2), 2.9)
    axes = np.atleast_1d(fig.subplots(1, len(splits), squeeze=False)[0])
    for ax, split in zip(axes, splits):
        score, label = scores.splits[split]
        edges = np.histogram_bin_edges(np.append(score, scores.threshold), bins=30)
        for cls, name, colour in ((0, "normal", "C0"), (1, "attack", "C3")):
            part = score[label == cls]
            if part.size:
                ax.hist(part, bins=edges, density=True, alpha=0.55, color=colour, label=f"{name} ({part.size})")
        ax.axvline(scores.threshold, color="black", ls="--", lw=1, label="threshold")
        ax.set(title=wrap(split), xlabel="P(attack)" if scores.kind != DETECTOR else "reconstruction error")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("density")
    fig.suptitle(f"{scores.model}: scores of normal and attack windows")
    return save_png(fig, folder / f"hist_{scores.model}.png")


def confusion_blocks(folder: Path, rows: list[dict[str, Any]]) -> list:
    models = list(dict.fromkeys(r["model"] for r in rows))
    blocks: list = []
    for model in models:
        mine = [r for r in rows if r["model"] == model and r.get("confusion")]
        if mine:
            blocks.append(Image(confusion_figure(folder, model, mine),
                                f"{model}: confusion matrix per split (rows: true class, columns: predicted)"))
    return blocks or [Note("no confusion matrix in evaluate/metrics.json")]


def confusion_figure(folder: Path, model: str, rows: list[dict[str, Any]]) -> Path:
    fig = new_figure(2.6 * max(len(rows), 2), 2.8)
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, row in zip(axes, rows):
        matrix = np.asarray(row["confusion"], dtype=np.int64)
        share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, f"{count:,}", ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
        ax.set(title=wrap(row["split"]), xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "attack"],
               yticklabels=["normal", "attack"])
        ax.title.set_fontsize(7)
    fig.suptitle(model)
    return save_png(fig, folder / f"confusion_{model}.png")


def wrap(split: str, width: int = 22) -> str:
    """A long split name (``test_04_unknown_vehicle_unknown_attack``) on two lines, broken at an underscore."""
    if len(split) <= width or "_" not in split:
        return split
    cut = min((i for i, c in enumerate(split) if c == "_"), key=lambda i: abs(i - len(split) / 2))
    return split[:cut] + "\n" + split[cut + 1:]


def _both_classes(label: np.ndarray) -> bool:
    return label.size > 0 and 0 < int(label.sum()) < label.size


def _hist_caption(scores: ModelScores) -> str:
    what = {DETECTOR: "reconstruction error", FUSION: "fused probability of attack"}.get(
        scores.kind, "softmax probability of attack")
    return f"{scores.model} ({scores.kind}): {what}, density per class, threshold {scores.threshold:.4g}"


REPORT = WorkloadReport(sections=sections, final_metrics=final_metrics, headline=headline)
