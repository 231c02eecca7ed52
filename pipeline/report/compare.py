"""Runs side by side: the workload's headline numbers of each run (``make compare``), and their mean
± standard deviation over the runs of one profile (a sweep's seeds).

The headline numbers are each CAN classifier's F1 and detector's AUROC per split, and each KG
model's held-out link AUC and MRR (and label macro-F1): see the workloads' ``plots`` modules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.report.html import format_cell
from pipeline.report.records import RunRecords
from pipeline.report.workload import Metrics, workload_report


def headline(records: RunRecords) -> Metrics:
    extra = workload_report(records.profile.task)
    return extra.headline(records) if extra is not None else {}


def metric_names(tables: list[Metrics]) -> list[str]:
    """Every metric of ``tables``, in the order they first appear."""
    return list(dict.fromkeys(name for table in tables for name in table))


def compare_rows(runs: list[RunRecords]) -> tuple[list[str], list[tuple]]:
    """(columns, rows): one row per headline metric, one column per run."""
    tables = [headline(r) for r in runs]
    rows = [(name, *(table.get(name) for table in tables)) for name in metric_names(tables)]
    return ["metric", *(r.key for r in runs)], rows


def compare_markdown(runs: list[RunRecords]) -> str:
    columns, rows = compare_rows(runs)
    states = ("state", *(r.state for r in runs))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
             "| " + " | ".join(states) + " |"]
    lines += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in rows]
    if not rows:
        lines.append("\n(no headline metrics: none of these runs has finished evaluate or export)")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Summary:
    group: str
    """The runs' profile name."""
    metric: str
    mean: float | None
    std: float | None
    """Sample standard deviation (n - 1); None for a single run."""
    n: int

    @property
    def text(self) -> str:
        if self.mean is None:
            return "–"
        return f"{self.mean:.4f}" + (f" ± {self.std:.4f}" if self.std is not None else "") + f" (n={self.n})"


def summarise(runs: list[RunRecords]) -> list[Summary]:
    """Mean ± std of every headline metric over the runs of each profile (undefined values left out)."""
    groups: dict[str, list[Metrics]] = {}
    for run in runs:
        groups.setdefault(run.profile.name, []).append(headline(run))
    out = []
    for group, tables in groups.items():
        for name in metric_names(tables):
            values = np.array([t[name] for t in tables if _defined(t.get(name))], dtype=np.float64)
            n = int(values.size)
            mean = float(values.mean()) if n else None
            std = float(values.std(ddof=1)) if n > 1 else None
            out.append(Summary(group, name, mean, std, n))
    return out


def _defined(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))
