"""``<run>/report.html``: the stage table, the training curves of every fit and the workload's own
figures, in one self-contained file.

Drawn from the run's files only (``pipeline.report.records``), so it works on a run that stopped
part way (the stages that ran are shown, the others say so) and never reruns a model. Each figure
is also saved as a PNG in the folder of the stage (or fit) it belongs to.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import io
from pipeline.report.figures import training_curves
from pipeline.report.html import Image, Note, Section, Table, render
from pipeline.report.records import RunRecords
from pipeline.report.workload import workload_report

REPORT = "report.html"
NOT_RECORDS = {".png", ".html", ".pt", ".parquet", ".csv", ".pkl", ".out", ".err", ".tmp"}
"""Files of a run that the report is not drawn from: its own figures and page, checkpoints,
embeddings, and the jobs' logs."""
STAGE_COLUMNS = ("stage", "state", "job", "host", "elapsed s", "peak MB", "planned MB", "peak / planned", "detail")


def write_report(records: RunRecords) -> Path:
    """Draw ``<run>/report.html`` (and its figures in the stage folders); returns its path."""
    sections = [stage_section(records), curves_section(records)]
    extra = workload_report(records.profile.task)
    if extra is not None:
        sections += extra.sections(records)
    intro = [f"profile {records.profile.name} (task {records.profile.task}), run {records.key}: "
             f"{records.state}", f"folder: {records.path}"]
    out = records.path / REPORT
    io.write_text(out, render(f"Run {records.key}", intro, sections))
    return out


def stage_section(records: RunRecords) -> Section:
    rows = []
    for s in records.stages:
        ratio = f"{s.peak_mb / s.planned_mb:.2f}" if s.peak_mb and s.planned_mb else None
        rows.append((s.stage, s.state, s.job_id, s.host, _fixed(s.elapsed_s, 1), _fixed(s.peak_mb, 0),
                     _fixed(s.planned_mb, 0), ratio, s.detail))
    notes = [Note("peak: the stage's measured peak (resident memory on the CPU, allocated CUDA memory on a GPU); "
                  "planned: what its batch planner expected (static costs and the largest batch), for the "
                  "largest of its fits")]
    return Section("Stages", [Table(STAGE_COLUMNS, rows, state_column=1), *notes])


def curves_section(records: RunRecords) -> Section:
    blocks: list = []
    rows = []
    for fit in records.fits():
        path = training_curves(fit)
        if path is None:
            continue
        best = [line for line in fit.epochs if line.get("best")]
        peaks = [line["peak_mem_mb"] for line in fit.epochs if line.get("peak_mem_mb") is not None]
        rows.append((fit.name, len(fit.epochs), int(best[-1]["epoch"]) if best else None,
                     fit.epochs[-1].get("train_loss"), _fixed(max(peaks) if peaks else None, 0),
                     _fixed(fit.plan.planned_mb if fit.plan else None, 0), len(fit.backoffs)))
        blocks.append(Image(path, f"{fit.name}: train loss, validation metrics, peak memory per epoch "
                                  f"({fit.dir.relative_to(records.path) / path.name})"))
    table = Table(("fit", "epochs", "best epoch", "last train loss", "max peak MB", "planned MB", "OOM back-offs"),
                  rows, empty="no stage of this run has finished a training epoch")
    return Section("Training curves", [table, *blocks])


def _fixed(value: float | None, digits: int) -> str | None:
    return None if value is None else f"{value:,.{digits}f}"


def is_current(run_path: Path) -> bool:
    """The run's report.html exists and is newer than every record it is drawn from."""
    page = run_path / REPORT
    if not page.exists():
        return False
    drawn = page.stat().st_mtime_ns
    for path in run_path.rglob("*"):
        relative = path.relative_to(run_path).parts
        if relative[0] == "logs" or path.name == "log" or path.suffix in NOT_RECORDS or not path.is_file():
            continue
        if path.stat().st_mtime_ns > drawn:
            return False
    return True
