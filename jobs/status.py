"""python -m jobs status --run RUN: one line per stage with its state, job, elapsed time and peak memory.

Three sources, each for what only it knows:

- done.json, checked against ``fingerprint_for``: is the stage done with the current inputs;
- <stage>/status.json, written by the stage itself: running, failed (with the error), interrupted;
- sacct, when present: what the scheduler did, including to jobs that never got to write
  status.json (pending, cancelled because an upstream stage failed, killed for memory, timed out).

Below the table come the warnings stages recorded in their folders (``pipeline.stage_warnings``),
such as a validation split that cannot select epochs.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import slurm
from jobs.errors import LaunchError
from jobs.records import latest_records, launched_with
from jobs.selection import DoneState, chain_dependencies, done_states
from jobs.slurm import SacctJob
from jobs.sweep import sweep_runs
from jobs.table import format_table
from pipeline.runs import RunDir
from pipeline.stage_warnings import stage_warnings

STATES = ("pending", "running", "done", "stale", "failed", "interrupted", "cancelled", "out_of_memory")
_KILLED = ("out_of_memory", "cancelled", "interrupted")


@dataclass(frozen=True)
class StageRow:
    stage: str
    state: str
    """One of STATES."""
    job_id: str | None
    elapsed_s: float | None
    peak_mb: float | None
    detail: str
    log: str | None


def resolve_state(
    stage: str,
    done: DoneState,
    status: dict[str, Any],
    job: SacctJob | None,
    submitted: bool,
    alive: bool | None = None,
) -> tuple[str, str]:
    """(state, detail) of one stage. A verified done marker wins; then the scheduler's account of
    the newest job (it alone knows about kills); then what the stage wrote itself."""
    if done == "done":
        return "done", ""
    if job is not None:
        from_queue = _state_from_sacct(stage, job, status)
        if from_queue is not None:
            return from_queue
    if done == "stale":
        return "stale", "done.json is from other inputs; resume reruns it"
    own = status.get("state")
    if own == "running":
        if alive is False:
            return "interrupted", f"process {status.get('pid')} is gone without a result"
        return "running", ""
    if own in ("failed", "interrupted"):
        return own, status.get("error") or ""
    if own == "done":
        return "stale", "done.json missing; resume reruns it"
    if submitted:
        return "pending", "submitted, not started"
    return "pending", "not submitted"


def _state_from_sacct(stage: str, job: SacctJob, status: dict[str, Any]) -> tuple[str, str] | None:
    if job.state in slurm.PENDING_STATES:
        return "pending", f"queued ({job.raw_state})"
    if job.state in slurm.RUNNING_STATES:
        return "running", ""
    if job.state == "OUT_OF_MEMORY":
        return "out_of_memory", f"killed by SLURM for memory; raise resources.{stage}.mem_gb"
    if job.state == "CANCELLED":
        return "cancelled", job.raw_state
    if job.state in slurm.INTERRUPTED_STATES:
        return "interrupted", f"{job.raw_state}; resume restarts it from its last checkpoint"
    if job.state == "FAILED":
        return "failed", status.get("error") or "job failed before the stage recorded an error; see the log"
    return None  # COMPLETED without a verified marker, or unknown: the run directory decides


def process_alive(status: dict[str, Any]) -> bool | None:
    """Is the stage's process still there? Known only on the host that ran it."""
    pid = status.get("pid")
    if not pid or status.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_rows(run: RunDir, stages: list[str], done: dict[str, DoneState], records: dict[str, dict[str, Any]],
               sacct: dict[str, SacctJob] | None, now: float | None = None) -> list[StageRow]:
    now = time.time() if now is None else now
    needs = chain_dependencies(run.profile().task, stages)
    rows: list[StageRow] = []
    for stage in stages:
        record = records.get(stage, {})
        job_id = record.get("job_id")
        job = (sacct or {}).get(job_id) if job_id else None
        status = current_status(run.read_status(stage), job_id if record.get("executor") == "slurm" else None)
        state, detail = resolve_state(stage, done.get(stage), status, job, bool(record), process_alive(status))
        upstream = [r for r in rows if r.stage in needs[stage]]
        if state == "out_of_memory":
            detail = _oom_advice(run, stage, record)
        elif state == "cancelled":
            detail = _why_cancelled(detail, upstream)
        elif state == "stale" and any(r.state != "done" for r in upstream):
            waiting = ", ".join(r.stage for r in upstream if r.state != "done")
            detail = f"upstream {waiting} is not done; resume reruns it after"
        elif state == "failed" and not status.get("error"):
            detail = _lost_task(record) or detail
        rows.append(StageRow(
            stage=stage, state=state, job_id=job_id,
            elapsed_s=_elapsed(state, status, run.done_record(stage) if state == "done" else None, job, now),
            peak_mb=_peak(status, job),
            detail=detail,
            log=_log(run, stage, record, state),
        ))
    return rows


def current_status(status: dict[str, Any], job_id: str | None) -> dict[str, Any]:
    """status.json, unless an older SLURM job of the stage wrote it: a resumed job that sacct does not
    list yet must read as submitted, not as the old job's end. (``job_id`` None: nothing to compare.)"""
    written_by = status.get("job_id")
    if job_id and written_by and str(written_by) != str(job_id):
        return {}
    return status


def _oom_advice(run: RunDir, stage: str, record: dict[str, Any]) -> str:
    """Killed for memory: what it requested, what its memory plan expected, and the command that gives it more."""
    asked = (record.get("resources") or {}).get("mem_gb")
    more = f"{math.ceil(2 * asked)}" if asked else "<GB>"
    had = f"requested {asked:g}G (--mem) was not enough; " if asked else ""
    plan = memory_plan_summary(run, stage)
    planned = f"{plan}; " if plan else ""
    return f"{had}{planned}make resume RUN={run.path} O=resources.{stage}.mem_gb={more}"


def memory_plan_summary(run: RunDir, stage: str) -> str | None:
    """What the stage's batch planner expected to use (<stage>/memory_plan.json), in one phrase.

    The plan counts model state and a batch's activations within the device budget it saw; on the
    CPU that budget is the job's --mem (its share, with several ranks on a node), and the plan also
    counts the process itself (resident baseline, mapped graph cache, allocator slack).
    """
    path = run.path / stage / "memory_plan.json"
    try:
        data = json.loads(path.read_text())
        budget, plan = data["budget"], data["plan"]
        static = sum(v for k, v in budget["static"].items() if not k.startswith("of which"))
        fixed = sum(budget["fixed"].values())
        tensors = static + int(plan["predicted_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (f"planned {_gib(tensors)} ({plan['graphs']} graphs per batch) plus {_gib(fixed)} reserved, "
            f"within {_gib(budget['total'])} of {budget['device']} memory ({stage}/{path.name})")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}G" if n >= 2**28 else f"{n / 2**20:.0f}M"


def _lost_task(record: dict[str, Any]) -> str | None:
    """A job that failed before its stage said why (rank 0 itself was killed): the first task srun saw
    end badly, its node and its own log (submitit's ``<job>_<task>_log.err`` beside task 0's)."""
    stderr = record.get("stderr")
    try:
        failures = slurm.task_failures(Path(stderr).read_text(errors="replace")) if stderr else []
    except OSError:
        return None
    if not failures:
        return None
    first = failures[0]
    log = Path(stderr).with_name(Path(stderr).name.replace("_0_log.err", f"_{first.task}_log.err"))
    return f"rank {first.task} on node {first.node}: {first.what} (srun); its log: {log}"


def _why_cancelled(detail: str, upstream: list[StageRow]) -> str:
    """SLURM cancels dependants of a failed job (kill-on-invalid-dep); say which one it was."""
    failed = [r.stage for r in upstream if r.state in ("failed", "cancelled", "out_of_memory", "interrupted")]
    if failed:
        return f"{detail}: upstream {', '.join(failed)} did not succeed; resume relaunches both"
    return detail


def _elapsed(state: str, status: dict[str, Any], done_record: dict | None, job: SacctJob | None, now: float) -> float | None:
    if state == "pending":
        return None
    if done_record and done_record.get("elapsed_s") is not None:
        return float(done_record["elapsed_s"])
    if job is not None and job.elapsed_s is not None:
        return job.elapsed_s
    started, ended = status.get("started"), status.get("ended")
    if started and ended:
        return float(ended) - float(started)
    if started and state == "running":
        return now - float(started)
    return None


def _peak(status: dict[str, Any], job: SacctJob | None) -> float | None:
    if job is not None and job.max_rss_mb:
        return job.max_rss_mb
    return status.get("peak_rss_mb")


def _log(run: RunDir, stage: str, record: dict[str, Any], state: str) -> str | None:
    """The stage's own log; the job's stderr when the stage never started or the scheduler killed it
    (only there does SLURM say why, e.g. 'oom-kill event')."""
    own = run.path / stage / "log"
    if state in _KILLED or not (own.exists() and own.stat().st_size):
        return record.get("stderr") or (str(own) if own.exists() else None)
    return str(own)


def format_rows(rows: list[StageRow]) -> str:
    return format_table(
        ("stage", "state", "job", "elapsed", "peak mem", "log", "detail"),
        [(r.stage, r.state, r.job_id, _hms(r.elapsed_s), _mem(r.peak_mb), r.log, r.detail or None) for r in rows],
    )


def _hms(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _mem(mb: float | None) -> str | None:
    if mb is None:
        return None
    return f"{mb / 1024:.1f}G" if mb >= 1024 else f"{mb:.0f}M"


def status_report(path: str | os.PathLike) -> str:
    """The text ``python -m jobs status`` prints: one table for a run, one per run for a sweep folder."""
    runs = sweep_runs(path)
    if runs is None:
        return run_report(RunDir(path))
    return "\n\n".join([f"sweep {Path(path).resolve()}: {len(runs)} runs"] + [run_report(run) for run in runs])


def run_report(run: RunDir) -> str:
    """A run's table, then for each stage that failed (or was killed) its error, log and the way on."""
    if not run.profile_path.exists():
        raise LaunchError(f"{run.path} is not a run directory (no profile.yaml); runs are runs/<profile>/<run_id>")
    profile = run.profile()
    records = latest_records(run)
    executor = launched_with(run) or "not launched through jobs/"
    ids = [r["job_id"] for r in records.values()]
    sacct = slurm.query_sacct(ids) if executor == "slurm" else None
    scontrol = slurm.query_scontrol(ids) if executor == "slurm" and sacct is None else None
    rows = stage_rows(run, list(profile.stages), done_states(run, profile), records, sacct or scontrol)
    lines = [f"run {run.path} (profile {profile.name}, executor {executor})", format_rows(rows)]
    lines += failure_notes(run, rows)
    lines += warning_notes(run, list(profile.stages))
    if executor == "slurm" and sacct is None and scontrol is not None:
        lines += ["", "note: sacct gave no answer (no accounting here?); job states come from scontrol, which "
                  "keeps a job for the cluster's MinJobAge after it ends"]
    elif executor == "slurm" and sacct is None:
        lines += ["", "note: sacct gave no answer (no accounting here?); states come from the stages' own files, "
                  "so a job the scheduler killed shows its last written state"]
    return "\n".join(lines)


def warning_notes(run: RunDir, stages: list[str]) -> list[str]:
    """What stages flagged for a look although they ran (``pipeline.stage_warnings``), one line each;
    each message names the profile key to change."""
    notes = []
    for stage in stages:
        for warning in stage_warnings(run.path / stage):
            where = f"{stage}/{warning['where']}" if warning["where"] else stage
            notes.append(f"warning {where}: {warning['message']}")
    return [""] + notes if notes else []


def failure_notes(run: RunDir, rows: list[StageRow]) -> list[str]:
    """Say which stage broke the chain (not the dependants SLURM cancelled after it), why, where its
    log is, and the command that goes on from there."""
    broken = [r for r in rows if r.state in ("failed", "out_of_memory", "interrupted")
              or (r.state == "cancelled" and "upstream" not in r.detail)]
    notes = [""] if broken else []
    for row in broken:
        notes += [f"stage {row.stage} {row.state.replace('_', ' ')}: {row.detail or 'see its log'}", f"  log: {row.log}"]
    if broken and not any(r.state == "out_of_memory" for r in broken):
        notes.append(f"after fixing it: make resume RUN={run.path} (relaunches only what is not done)")
    return notes

