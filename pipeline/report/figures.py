"""Figures of the report: matplotlib's object API on the Agg canvas (no display, no pyplot state),
saved as PNG atomically, and the training curves every fit gets.

A figure drawn twice from the same records is the same bytes (no timestamp in the file), so
re-running the report changes no file and re-tracking the run uploads nothing new.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pipeline import io
from pipeline.report.records import Fit

CURVES = "curves.png"
DPI = 90


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (atomically: a report read while it is redrawn is never half a PNG)."""
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return path


def unit_scores(epochs: tuple[dict[str, Any], ...]) -> tuple[list[str], list[str]]:
    """The validation keys of a fit, split into scores in [0, 1] (AUROC, F1, MRR) and the rest
    (losses, reconstruction errors), which get their own axis; ``*_rounded`` copies are left out."""
    keys: list[str] = []
    for line in epochs:
        keys += [k for k, v in (line.get("val") or {}).items()
                 if k not in keys and isinstance(v, (int, float)) and not k.endswith("_rounded")]
    unit = [k for k in keys if all(0.0 <= _val(line, k) <= 1.0 for line in epochs if _val(line, k) is not None)]
    return unit, [k for k in keys if k not in unit]


def training_curves(fit: Fit) -> Path | None:
    """``<fit dir>/curves.png``: train loss, validation metrics (the best epoch marked) and the peak
    memory of each epoch against the plan; None for a fit without a finished epoch."""
    if not fit.epochs:
        return None
    epochs = [int(line["epoch"]) for line in fit.epochs]
    fig = new_figure(13, 3.4)
    loss_ax, val_ax, mem_ax = fig.subplots(1, 3)
    fig.suptitle(fit.name)
    loss_ax.plot(epochs, [line.get("train_loss") for line in fit.epochs], marker="o", ms=3)
    loss_ax.set(title="train loss", xlabel="epoch")
    _validation_panel(val_ax, fit, epochs)
    _memory_panel(mem_ax, fit, epochs)
    for ax in (loss_ax, val_ax, mem_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save_png(fig, fit.dir / CURVES)


def _validation_panel(ax, fit: Fit, epochs: list[int]) -> None:
    unit, other = unit_scores(fit.epochs)
    for key in unit:
        ax.plot(epochs, [_val(line, key) for line in fit.epochs], marker="o", ms=3, label=key)
    best = [int(line["epoch"]) for line in fit.epochs if line.get("best")]
    if best:
        ax.axvline(best[-1], color="grey", ls=":", label=f"best epoch {best[-1]}")
    ax.set(title="validation", xlabel="epoch")
    if unit:
        ax.set_ylim(-0.02, 1.02)
    handles, labels = ax.get_legend_handles_labels()
    if other:
        twin = ax.twinx()
        for i, key in enumerate(other):
            twin.plot(epochs, [_val(line, key) for line in fit.epochs], ls="--", color=f"C{len(unit) + i}", label=key)
        more_h, more_l = twin.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + [f"{name} (right axis)" for name in more_l]
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="best")


def _memory_panel(ax, fit: Fit, epochs: list[int]) -> None:
    peaks = [line.get("peak_mem_mb") for line in fit.epochs]
    ax.plot(epochs, peaks, marker="o", ms=3, label=f"measured peak ({fit.mem_kind})")
    title = "peak memory per epoch (MB)"
    if fit.plan is not None:
        ax.axhline(fit.plan.planned_mb, color="C1", ls="--", label=f"planned {fit.plan.planned_mb:,.0f} MB")
        budget = f"budget {fit.plan.budget_mb:,.0f} of {fit.plan.device_total_mb:,.0f} MB"
        # A budget far above the curves would flatten them against the axis: then it is named only.
        highest = max([p for p in peaks if p is not None] + [fit.plan.planned_mb])
        if fit.plan.budget_mb <= 4 * highest:
            ax.axhline(fit.plan.budget_mb, color="C3", ls=":", label=budget)
        else:
            title += f"\n{budget} ({fit.plan.device})"
    elif any("planned_mb" in line for line in fit.epochs):
        ax.plot(epochs, [line.get("planned_mb") for line in fit.epochs], ls="--", label="planned activations")
    for i, event in enumerate(fit.backoffs):
        ax.axvline(int(event["epoch"]), color="red", alpha=0.6, label="OOM back-off" if i == 0 else None)
    ax.set(title=title, xlabel="epoch")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="lower right")


def _val(line: dict[str, Any], key: str) -> float | None:
    value = (line.get("val") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None
