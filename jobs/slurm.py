"""What the launch layer asks SLURM directly: is it there, what happened to a job (sacct), cancel.

Parsing is kept apart from calling, so tests feed sample ``sacct`` output to the parsers.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable

from jobs.errors import LaunchError

SACCT_FORMAT = "JobID,State,Elapsed,MaxRSS"

# sacct states, by what they mean for a stage.
PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT"})
INTERRUPTED_STATES = frozenset({"TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"})
ACTIVE_STATES = PENDING_STATES | RUNNING_STATES


@dataclass(frozen=True)
class SacctJob:
    """One job as sacct reports it, with its steps folded in."""

    job_id: str
    state: str
    """Normalised state, e.g. CANCELLED for 'CANCELLED by 1000'."""
    raw_state: str
    elapsed_s: float | None
    max_rss_mb: float | None
    """Largest MaxRSS over the job's steps (the job line itself carries none)."""


def missing_commands(commands: Iterable[str] = ("sbatch", "srun")) -> list[str]:
    """SLURM commands not on PATH (submitit needs srun inside the batch script, sbatch to submit)."""
    return [cmd for cmd in commands if shutil.which(cmd) is None]


def require_slurm(profile_hint: str = "local") -> None:
    """Stop with a clear error (exit 2) when this machine cannot submit to SLURM."""
    missing = missing_commands()
    if missing:
        raise LaunchError(
            f"{' and '.join(missing)} not on PATH: this machine cannot submit to SLURM. "
            f"Run the same chain here with the local executor: make dry-run PROFILE={profile_hint}"
        )


def normalise_state(raw: str) -> str:
    """'CANCELLED by 1000' -> 'CANCELLED'; 'RUNNING' -> 'RUNNING'."""
    return raw.strip().split(" ", 1)[0].rstrip("+").upper() if raw.strip() else "UNKNOWN"


def parse_elapsed(text: str) -> float | None:
    """sacct elapsed '[D-]HH:MM:SS', 'MM:SS' or 'MM:SS.mmm' -> seconds."""
    text = text.strip()
    if not text or text.upper() in {"UNKNOWN", "INVALID"}:
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    parts = [float(p) for p in text.split(":")]
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return days * 86400 + seconds


_RSS = re.compile(r"^(?P<num>\d+(?:\.\d+)?)(?P<unit>[KMGTP]?)$", re.IGNORECASE)
_RSS_TO_MB = {"": 1 / 1024**2, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2, "P": 1024.0**3}


def parse_rss_mb(text: str) -> float | None:
    """sacct MaxRSS ('123456K', '2.5G', '0', '') -> MiB; a bare number is bytes."""
    match = _RSS.match(text.strip())
    if not match:
        return None
    return float(match["num"]) * _RSS_TO_MB[match["unit"].upper()]


_ARRAY_RECORD = re.compile(r"^(?P<base>\d+)_\[(?P<spec>[^\]]+)\]$")


def array_base(job_id: str) -> str:
    """'123_4' (task 4 of array 123) -> '123'; a plain job id is its own base."""
    return str(job_id).split("_", 1)[0]


def expand_array_record(job_field: str) -> list[str]:
    """sacct's one line for array tasks not started yet, '123_[1-3,5%4]', -> ['123_1', ..., '123_5'].

    Any other id comes back as it is. ('%4' is the array's throttle, not a task.)
    """
    match = _ARRAY_RECORD.match(job_field)
    if not match:
        return [job_field]
    ids = []
    for part in match["spec"].split("%", 1)[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            ids += [f"{match['base']}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def parse_sacct(text: str) -> dict[str, SacctJob]:
    """Output of ``sacct -j IDS --format=JobID,State,Elapsed,MaxRSS -P -n`` -> job id -> SacctJob.

    Step lines (``123.batch``, ``123.0``, ``123.extern``) contribute their MaxRSS to their job;
    the state and elapsed time come from the job line. When a requeued job appears more than once,
    the last line wins (sacct lists the newest last). A step killed for memory makes the job
    OUT_OF_MEMORY even though SLURM marks the job itself FAILED (the batch script saw srun fail).
    Array tasks are keyed ``<array>_<task>``; the pending ones, which sacct folds into one line
    (``123_[2-5]``), each get that line's state.
    """
    jobs: dict[str, dict] = {}
    rss: dict[str, float] = {}
    oom_steps: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 4:
            continue
        job_field, state, elapsed, max_rss = (f.strip() for f in fields[:4])
        main_id, _, step = job_field.partition(".")
        step_rss = parse_rss_mb(max_rss)
        if step_rss is not None:
            rss[main_id] = max(rss.get(main_id, 0.0), step_rss)
        if not step:
            for job_id in expand_array_record(main_id):
                jobs[job_id] = {"raw_state": state, "elapsed_s": parse_elapsed(elapsed)}
        elif normalise_state(state) == "OUT_OF_MEMORY":
            oom_steps[main_id] = job_field
    return {job_id: _job(job_id, info, rss.get(job_id), oom_steps.get(job_id)) for job_id, info in jobs.items()}


def _job(job_id: str, info: dict, rss_mb: float | None, oom_step: str | None) -> SacctJob:
    state, raw = normalise_state(info["raw_state"]), info["raw_state"]
    if oom_step and state in ("FAILED", "OUT_OF_MEMORY", "CANCELLED"):
        state, raw = "OUT_OF_MEMORY", f"{raw} (step {oom_step} OUT_OF_MEMORY)"
    return SacctJob(job_id=job_id, state=state, raw_state=raw, elapsed_s=info["elapsed_s"],
                    max_rss_mb=round(rss_mb, 1) if rss_mb else None)


def query_sacct(job_ids: Iterable[str], timeout_s: float = 30) -> dict[str, SacctJob] | None:
    """What sacct knows about ``job_ids``; None when sacct is missing or fails (then say so).

    Array tasks are asked for by their array: sacct lists a task that has not started only under it.
    """
    ids = sorted({array_base(str(j)) for j in job_ids if j})
    if not ids or shutil.which("sacct") is None:
        return None
    cmd = ["sacct", "-j", ",".join(ids), f"--format={SACCT_FORMAT}", "-P", "-n"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return parse_sacct(out)


def parse_scontrol(text: str) -> dict[str, SacctJob]:
    """Output of ``scontrol show job -o IDS`` (one line per job or array task) -> job id -> SacctJob.

    What a cluster without accounting still knows about a job for MinJobAge after it ends: its state
    and run time (no MaxRSS). Array tasks are keyed ``<array>_<task>``, pending ranges expanded.
    """
    jobs: dict[str, SacctJob] = {}
    for line in text.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if "JobId" not in fields or "JobState" not in fields:
            continue
        array, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        ids = expand_array_record(f"{array}_[{task}]") if array and task else [fields["JobId"]]
        for job_id in ids:
            jobs[job_id] = SacctJob(job_id=job_id, state=normalise_state(fields["JobState"]),
                                    raw_state=fields["JobState"], elapsed_s=parse_elapsed(fields.get("RunTime", "")),
                                    max_rss_mb=None)
    return jobs


def query_scontrol(job_ids: Iterable[str], timeout_s: float = 30) -> dict[str, SacctJob] | None:
    """The controller's account of ``job_ids`` where sacct has none (a cluster without accounting);
    None when scontrol is missing or knows none of them (ended longer than MinJobAge ago)."""
    if shutil.which("scontrol") is None:
        return None
    out = []
    for job_id in sorted({array_base(str(j)) for j in job_ids if j}):
        try:
            out.append(subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                                      timeout=timeout_s, check=False).stdout)
        except (subprocess.SubprocessError, OSError):
            continue
    return parse_scontrol("\n".join(out)) or None


# Not anchored: the line may follow a progress bar's carriage return in the same stderr.
_SRUN_TASK_ERROR = re.compile(r"srun: error: (?P<node>[^:\s]+): tasks? (?P<tasks>[\d,-]+): (?P<what>[^\r\n]+)")


@dataclass(frozen=True)
class TaskFailure:
    """A task (rank) of a job step that srun saw end badly, from the job's stderr."""

    node: str
    task: int
    what: str
    """srun's words: 'Killed', 'Exited with exit code 1', 'Segmentation fault', ..."""


def task_failures(stderr: str) -> list[TaskFailure]:
    """srun's ``srun: error: <node>: task <t>: <what>`` lines, in order (the first is the first to go)."""
    return [TaskFailure(m["node"], int(re.split(r"[,-]", m["tasks"])[0]), m["what"].strip())
            for m in _SRUN_TASK_ERROR.finditer(stderr)]


def cancel(job_ids: Iterable[str]) -> list[str]:
    """scancel the given jobs; returns those that could not be cancelled (best effort)."""
    failed = []
    for job_id in job_ids:
        try:
            subprocess.run(["scancel", str(job_id)], capture_output=True, timeout=30, check=True)
        except (subprocess.SubprocessError, OSError):
            failed.append(str(job_id))
    return failed
