"""Where a fit's files live, and which checkpoint a stage that is running now would resume from.

A fit writes into one folder: the stage folder (``<run>/<stage>``), or a model sub-folder of it
when a stage trains several models one after the other (the student stage: ``kd/``, ``no_kd/``,
``vgae/``). While ``Trainer.fit`` runs, rank 0 keeps an empty ``fit_in_progress`` file in that
folder; it goes when the fit returns or raises.

The requeue hook (``jobs.stage_job.StageJob.checkpoint``) knows only the run directory and the
stage, and runs inside a signal handler, so it reads this marker instead of asking the loop:
the folder holding it is the fit in progress, whatever sub-folder that is, and its
``checkpoint.pt`` (if an epoch has finished) is what the requeued job continues from. A finished
fit's checkpoint is never named, even when it is the newest file in the stage folder. A marker left
behind by a killed process is replaced when its fit runs again; should two exist, the newer wins.

No torch here: the hook must not start importing torch while a signal interrupts the process.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline import io

CHECKPOINT = "checkpoint.pt"
"""The last finished epoch: model, optimizer, scaler, RNG states and progress (``checkpoint.py``)."""
BEST = "best.pt"
"""The best epoch so far: registered model name, constructor values and weights (``load_model``)."""
METRICS = "metrics.jsonl"
"""One line per epoch (and per out-of-memory back-off)."""
IN_PROGRESS = "fit_in_progress"
"""Present while a fit of this folder runs."""


def fit_dir(run_dir: str | os.PathLike, stage: str, model: str | None = None) -> Path:
    """The folder of one fit: the stage folder, or its ``model`` sub-folder."""
    stage_dir = Path(run_dir) / stage
    return stage_dir / model if model else stage_dir


def checkpoint_path(run_dir: str | os.PathLike, stage: str, model: str | None = None) -> Path:
    return fit_dir(run_dir, stage, model) / CHECKPOINT


def active_checkpoint(run_dir: str | os.PathLike, stage: str) -> Path | None:
    """The ``checkpoint.pt`` of the fit running in ``stage`` now; None before its first epoch ends
    or when no fit runs (the requeued job then starts that fit afresh)."""
    stage_dir = fit_dir(run_dir, stage)
    markers = [(mtime, path) for path in (stage_dir / IN_PROGRESS, *stage_dir.glob(f"*/{IN_PROGRESS}"))
               if (mtime := _mtime_ns(path)) is not None]
    if not markers:
        return None
    checkpoint = max(markers)[1].parent / CHECKPOINT
    return checkpoint if checkpoint.exists() else None


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def trim_metrics(path: Path, last_epoch: int) -> None:
    """Drop the ``metrics.jsonl`` lines of epochs after the checkpoint (written just before a crash);
    those epochs will be run again."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = [line for line in lines if line.strip() and _line_epoch(line) <= last_epoch]
    if len(keep) != len(lines):
        io.write_text(path, "".join(line + "\n" for line in keep))


def _line_epoch(line: str) -> int:
    """Epoch of a metrics line; a torn (unparseable) line counts as later than any checkpoint."""
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
