"""Runs one stage inside a run directory: the function every job and `python -m pipeline.cli` call.

It checks that upstream stages are done, skips a stage whose done marker matches its inputs,
records status (state, host, job id, timings, peak memory, error) and writes the done marker.

A training stage started as several processes (WORLD_SIZE > 1, see ``pipeline.distributed``)
runs on every rank inside one process group; only rank 0 writes status.json, done.json and the
stage log, the others log to their own stderr.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

from pipeline.config import Profile
from pipeline.device import peak_rss_mb
from pipeline.errors import UserError, is_expected
from pipeline.hostmem import fix_mmap_threshold
from pipeline.runs import RunDir, stage_fingerprint
from pipeline.stages import chain_needs, stage_spec, workload


class StageError(UserError, RuntimeError):
    """A stage could not run; the message names the stage, the reason and the log."""


@dataclass
class StageContext:
    profile: Profile
    run: RunDir
    stage: str
    dir: Path
    log: logging.Logger
    fingerprint: str = ""
    """Hash of this stage's inputs; training checkpoints carry it so a changed profile starts afresh."""
    upstream: dict[str, dict[str, Any]] = field(default_factory=dict)
    """done.json records of the stages this one reads, by name."""

    @property
    def device(self):
        from pipeline.device import resolve_device

        return resolve_device(self.profile.device)


def upstream_records(run: RunDir, profile: Profile, stage: str) -> dict[str, dict[str, Any]]:
    records = {}
    for dep in chain_needs(profile.task, stage, profile.stages):
        record = run.done_record(dep)
        if record is None:
            raise StageError(f"stage {stage!r} needs {dep!r}, which is not done in {run.path}")
        records[dep] = record
    return records


def fingerprint_for(run: RunDir, profile: Profile, stage: str) -> str:
    upstream = {dep: rec.get("result_key", rec["fingerprint"]) for dep, rec in upstream_records(run, profile, stage).items()}
    return stage_fingerprint(profile, stage, upstream)


def run_stage(run_dir: str | os.PathLike, stage: str, overrides: tuple[str, ...] = (), force: bool = False) -> dict[str, Any]:
    """Run ``stage`` in ``run_dir`` unless it is already done with the same inputs."""
    run = RunDir(run_dir)
    profile = run.profile(overrides)
    spec = stage_spec(profile.task, stage)
    work = workload(profile.task)
    stage_dir = run.stage_dir(stage)
    rank, world = _launched_rank()
    log = _stage_logger(stage, stage_dir / "log", rank)
    if world > 1 and not spec.trains:
        raise StageError(f"stage {stage!r} does not train, so it runs as one process, but it was started as "
                         f"{world}; drop resources.{stage}.nodes/tasks_per_node from the profile")
    upstream = upstream_records(run, profile, stage)
    fingerprint = fingerprint_for(run, profile, stage)
    if not force and run.is_done(stage, fingerprint):
        log.info("stage %s already done with the same inputs (%s); nothing to do", stage, fingerprint)
        return run.done_record(stage) or {}

    main = rank == 0
    if force and main:
        clear_stage_outputs(stage_dir)
    started = time.time()
    job_id = slurm_job_id()
    if main:
        run.write_status(stage, state="running", started=started, ended=None, job_id=job_id, pid=os.getpid(),
                         error=None, log=str(stage_dir / "log"), **({"ranks": world} if world > 1 else {}))
    ctx = StageContext(profile=profile, run=run, stage=stage, dir=stage_dir, log=log,
                       fingerprint=fingerprint, upstream=upstream)
    log.info("stage %s starting in %s (job %s)", stage, run.path, job_id or "-")
    if work.steady_allocations:
        fix_mmap_threshold()
    try:
        with _process_group(ctx, world):
            summary = spec.load()(ctx) or {}
    except BaseException as exc:
        # A preemption/timeout signal is not a failure: submitit requeues the job.
        state = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
        if main:
            run.write_status(stage, state=state, ended=time.time(), peak_rss_mb=peak_rss_mb(),
                             error=f"{type(exc).__name__}: {exc}", user_error=is_expected(exc))
        if state == "interrupted":  # no traceback: the scheduler stopped it, the stage did nothing wrong
            log.warning("stage %s interrupted (%s: %s)", stage, type(exc).__name__, exc)
        else:
            # The traceback goes to the log file only: whoever called reports the error on the
            # console (one line from the command lines, the whole traceback from a job).
            log.error("stage %s %s: %s\n%s", stage, state, exc, traceback.format_exc(), extra={CONSOLE: False})
            if main:
                exc.add_note(f"stage log: {stage_dir / 'log'}")
        raise
    ended = time.time()
    summary = {**summary, "elapsed_s": round(ended - started, 3), "peak_rss_mb": peak_rss_mb()}
    if not main:
        return summary
    run.mark_done(stage, fingerprint, summary)
    run.write_status(stage, state="done", ended=ended, peak_rss_mb=summary["peak_rss_mb"], error=None)
    log.info("stage %s done in %.1fs", stage, ended - started)
    return run.done_record(stage) or summary


def slurm_job_id() -> str | None:
    """This job's id as sacct and jobs.json name it: <array>_<task> for a task of a job array."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _launched_rank() -> tuple[int, int]:
    """(rank, world size) the launcher gave this process (torch's env:// variables; 0, 1 when alone)."""
    world = os.environ.get("WORLD_SIZE", "1")
    rank = os.environ.get("RANK", "0")
    return (int(rank) if rank.isdigit() else 0), (int(world) if world.isdigit() else 1)


def _process_group(ctx: StageContext, world: int) -> ContextManager:
    """A process group around a stage started as several ranks; the rank files are written after it
    is torn down, so every rank has finished its part (the group's last collective) by then."""
    if world <= 1:
        return nullcontext()
    from pipeline import distributed  # imports torch: only for stages that run data-parallel

    timeout = ctx.profile.resources_for(ctx.stage).collective_timeout_s
    return distributed.process_group(ctx.device, ctx.log, timeout, f"resources.{ctx.stage}.collective_timeout_s")


KEEP_ON_FORCE = {"log", "status.json"}


def clear_stage_outputs(stage_dir: Path) -> None:
    """A forced re-run starts from nothing: checkpoints and results of the last run go."""
    import shutil

    for entry in stage_dir.iterdir():
        if entry.name in KEEP_ON_FORCE:
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


CONSOLE = "console"
"""Log record attribute: False keeps the record out of the console (stderr) handler of rank 0."""


def _stage_logger(stage: str, path: Path, rank: int = 0) -> logging.Logger:
    """The stage's logger: to <stage>/log and stderr on rank 0, to stderr only (marked) on other ranks."""
    log = logging.getLogger(f"pipeline.{stage}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter(f"%(asctime)s %(name)s{f' [rank {rank}]' if rank else ''} %(levelname)s %(message)s")
    handlers = (logging.FileHandler(path), logging.StreamHandler(sys.stderr)) if rank == 0 else (
        logging.StreamHandler(sys.stderr),)
    if rank == 0:
        handlers[1].addFilter(lambda record: getattr(record, CONSOLE, True))
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    return log
