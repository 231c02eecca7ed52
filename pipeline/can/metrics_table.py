"""``evaluate/metrics.md``: the evaluate stage's rows as markdown tables, one for the classifiers and
one for the anomaly detectors, with near-trivial rows marked."""
from __future__ import annotations

from typing import Any

from pipeline.can.metrics import NEAR_TRIVIAL_MARGIN

COLUMNS = (("prevalence", "prevalence"), ("auroc", "AUROC"), ("average_precision", "AP"), ("mcc", "MCC"),
           ("balanced_accuracy", "bal. acc."), ("f1", "F1"), ("trivial_f1", "trivial F1"),
           ("oracle_f1", "oracle F1"))
"""(row key, header) of the score columns, between the split's size and the confusion counts."""
NEAR_TRIVIAL = "⚠ near trivial"
LEGEND = (f"{NEAR_TRIVIAL}: F1 within {NEAR_TRIVIAL_MARGIN} of the trivial F1, that of calling every window "
          "an attack (2p/(1+p) at prevalence p). Oracle F1: the best F1 any threshold reaches on the split's "
          "own labels, an upper bound that shows the calibration gap, never used to choose anything.")
DETECTOR_HEADING = "## Anomaly detectors (VGAE reconstruction error; F1 at the threshold chosen on val)"
FUSION_HEADING = ("## Fusion (stacked teacher, autoencoder and student scores, fitted on val; "
                  "F1 at the threshold chosen on val)")

NORMALISED_NOTE = ("+norm rows: scores (a classifier's logit of attack, a detector's error) normalised per capture "
                   "against its own score distribution: transductive, reads no label (threshold chosen on "
                   "normalised val).")

ID_AGNOSTIC_NOTE = ("Inputs are id-agnostic (data.id_agnostic): no model sees which CAN id a node is; node features "
                    "are relative to each id's statistics over its own capture: transductive, reads no label.\n\n")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One row per (model, split): size, scores, a mark on near-trivial rows, the confusion matrix as
    TN/FP/FN/TP, then parameters and CPU latency per 1,000 graphs (blank when not measured). A score
    that is undefined (None) reads "undefined"; the legend and each row's note follow the table."""
    head = ["model", "split", "graphs", "attacks", *(h for _, h in COLUMNS), "vs trivial",
            "TN", "FP", "FN", "TP", "params", "CPU ms / 1k graphs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        (tn, fp), (fn, tp) = r["confusion"]
        scores = [_score(r.get(k)) for k, _ in COLUMNS]
        cells = [r["model"], r["split"], str(r["graphs"]), str(r["attacks"]), *scores,
                 NEAR_TRIVIAL if r.get("near_trivial") else "", str(tn), str(fp), str(fn), str(tp),
                 f"{r['params']:,}" if "params" in r else "",
                 f"{r['cpu_ms_per_1k']:.1f}" if "cpu_ms_per_1k" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['model']} on {r['split']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + ["", LEGEND] + ([""] + notes if notes else [])) + "\n"


def classifier_table(rows: list[dict[str, Any]]) -> str:
    """The classifiers' section: scores at the argmax, and their +norm rows at the normalised val threshold."""
    return markdown_table(rows) + _normalised_note(rows)


def detector_table(rows: list[dict[str, Any]]) -> str:
    """The anomaly detectors' section: AUROC of the reconstruction error, scores at the threshold."""
    return f"\n{DETECTOR_HEADING}\n\n" + markdown_table(rows) + _normalised_note(rows)


def _normalised_note(rows: list[dict[str, Any]]) -> str:
    return f"\n{NORMALISED_NOTE}\n" if any(r.get("normalisation") for r in rows) else ""


def fusion_table(rows: list[dict[str, Any]]) -> str:
    """The fusion stage's section: its fused probability of attack, scored at its validation threshold."""
    return f"\n{FUSION_HEADING}\n\n" + markdown_table(rows)


def _score(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"
