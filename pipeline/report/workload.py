"""What a workload adds to the core's report, tracking import and comparison: one object per
workload, named in the registry (``Workload.report``), so the core never imports a workload."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.report.html import Section
from pipeline.report.records import RunRecords
from pipeline.stages import resolve, workload

Metrics = dict[str, float | None]


@dataclass(frozen=True)
class WorkloadReport:
    sections: Callable[[RunRecords], list[Section]]
    """Its part of the run report; the figures are saved in the stage folders as they are drawn."""
    final_metrics: Callable[[RunRecords], dict[str, Metrics]]
    """stage -> ``model/split/metric`` -> value: the results each stage produced (None: undefined)."""
    headline: Callable[[RunRecords], Metrics]
    """The numbers runs are compared by (``make compare``, a sweep's mean ± std), in reading order."""


def workload_report(task: str) -> WorkloadReport | None:
    entry = workload(task).report
    return resolve(entry) if entry else None
