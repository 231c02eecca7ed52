"""A run's records as the report, the tracking import and ``make compare`` read them.

Everything comes from the run folder, never from a model: ``profile.yaml``, ``jobs.json`` and, per
stage, ``status.json``, ``done.json``, ``memory_plan.json`` and ``metrics.jsonl``. A stage that fits
one model keeps those in its folder; one that fits several keeps them in a sub-folder per model
(``student/kd/``, ``student/no_kd/``, ``student/vgae/``): each such folder is one :class:`Fit`.
A run that stopped part way reads as well as a finished one: a missing file is a missing value.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.config import Profile
from pipeline.runs import RunDir

MiB = 2**20
METRICS = "metrics.jsonl"
PLAN = "memory_plan.json"


@dataclass(frozen=True)
class PlannedMemory:
    """What a fit's batch planner expected (``memory_plan.json``), in MB."""

    planned_mb: float
    """Static costs plus the predicted peak of the largest batch: what the process (CPU) or the
    device's allocator (CUDA) should peak at."""
    budget_mb: float
    """device total x safety_factor minus the fixed reserves: the most the planner let itself use."""
    device_total_mb: float
    device: str


@dataclass(frozen=True)
class Fit:
    """One model's training history: the epoch lines of its ``metrics.jsonl``."""

    stage: str
    name: str
    """``teacher``, or ``student/kd`` for a model sub-folder."""
    dir: Path
    epochs: tuple[dict[str, Any], ...]
    backoffs: tuple[dict[str, Any], ...]
    """``oom_backoff`` event lines: the epoch and the node cap the batches were cut to."""
    plan: PlannedMemory | None

    @property
    def mem_kind(self) -> str:
        return str(self.epochs[-1].get("mem_kind", "rss")) if self.epochs else "rss"


@dataclass(frozen=True)
class StageRecord:
    stage: str
    state: str
    """``done``, ``failed``, ``running``, ``interrupted``, ``not run``, or what the launch layer knows
    better (``out_of_memory``, ``cancelled``, ``pending``, ``stale``)."""
    detail: str
    job_id: str | None
    host: str | None
    started: float | None
    ended: float | None
    elapsed_s: float | None
    peak_mb: float | None
    done: dict[str, Any] | None
    ran: bool
    """The stage started at least once (it wrote status.json or done.json)."""
    fits: tuple[Fit, ...] = ()

    @property
    def planned_mb(self) -> float | None:
        plans = [f.plan.planned_mb for f in self.fits if f.plan is not None]
        return max(plans) if plans else None


@dataclass(frozen=True)
class RunRecords:
    run: RunDir
    profile: Profile
    stages: tuple[StageRecord, ...]
    jobs: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def key(self) -> str:
        """``<profile>/<run_id>``: the run's name wherever its folder is copied to."""
        return f"{self.path.parent.name}/{self.path.name}"

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.stage == name), None)

    def fits(self) -> list[Fit]:
        return [fit for stage in self.stages for fit in stage.fits]

    @property
    def state(self) -> str:
        """The chain's state: its worst stage (failed over stopped over unfinished over done)."""
        states = {s.state for s in self.stages}
        for worst in ("failed", "out_of_memory", "cancelled", "interrupted", "running", "pending", "stale", "not run"):
            if worst in states:
                return worst
        return "done"


def read_run(path: str | os.PathLike, states: Mapping[str, tuple[str, str]] | None = None,
             overrides: Sequence[str] = ()) -> RunRecords:
    """The records of the run in ``path``. ``states`` (stage -> (state, detail)) is what the launch
    layer knows from the scheduler; without it each stage's state is read from its own files.
    ``overrides`` apply to the frozen profile as read (``tracking.uri`` for one import)."""
    run = RunDir(path)
    profile = run.profile(list(overrides))
    jobs = _read_json(run.jobs_path) or {}
    launched = jobs.get("stages", {})
    stages = tuple(_stage_record(run, stage, launched.get(stage, {}), (states or {}).get(stage))
                   for stage in profile.stages)
    return RunRecords(run=run, profile=profile, stages=stages, jobs=jobs)


def _stage_record(run: RunDir, stage: str, launched: dict[str, Any],
                  known: tuple[str, str] | None) -> StageRecord:
    folder = run.path / stage
    status = _read_json(folder / "status.json") or {}
    done = _read_json(folder / "done.json")
    state, detail = known or _state_from_files(status, done)
    started, ended = status.get("started"), status.get("ended")
    elapsed = (done or {}).get("elapsed_s")
    if elapsed is None and started and ended:
        elapsed = round(float(ended) - float(started), 3)
    peak = (done or {}).get("peak_rss_mb", status.get("peak_rss_mb"))
    fits = tuple(read_fit(stage, d, run.path) for d in fit_dirs(folder))
    return StageRecord(stage=stage, state=state, detail=detail,
                       job_id=_str_or_none(status.get("job_id") or launched.get("job_id")),
                       host=status.get("host"), started=started, ended=ended, elapsed_s=elapsed,
                       peak_mb=_max_peak(peak, fits), done=done, ran=bool(status) or done is not None, fits=fits)


def _state_from_files(status: dict[str, Any], done: dict[str, Any] | None) -> tuple[str, str]:
    if done is not None:
        return "done", ""
    own = status.get("state")
    if own in ("running", "failed", "interrupted"):
        return own, status.get("error") or ""
    return "not run", ""


def _max_peak(peak: float | None, fits: tuple[Fit, ...]) -> float | None:
    """The stage's peak: its own record, else the highest peak its epochs measured (a stage that
    died mid-fit wrote no done.json)."""
    if peak is not None:
        return float(peak)
    peaks = [float(line["peak_mem_mb"]) for fit in fits for line in fit.epochs if line.get("peak_mem_mb") is not None]
    return max(peaks) if peaks else None


def fit_dirs(stage_dir: Path) -> list[Path]:
    """The folders of a stage that hold a fit's metrics.jsonl: the stage's own, then its model sub-folders."""
    if not stage_dir.is_dir():
        return []
    own = [stage_dir] if (stage_dir / METRICS).exists() else []
    return own + sorted(p.parent for p in stage_dir.glob(f"*/{METRICS}"))


def read_fit(stage: str, folder: Path, run_path: Path) -> Fit:
    lines = read_jsonl(folder / METRICS)
    name = folder.relative_to(run_path).as_posix()
    return Fit(stage=stage, name=name, dir=folder,
               epochs=tuple(line for line in lines if "event" not in line and "epoch" in line),
               backoffs=tuple(line for line in lines if line.get("event") == "oom_backoff"),
               plan=planned_memory(folder / PLAN))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a line cut short by a killed process is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def planned_memory(path: Path) -> PlannedMemory | None:
    """The figures of a saved plan (``pipeline.memory.budget.write_plan``), or None without one."""
    data = _read_json(path)
    try:
        budget, plan = data["budget"], data["plan"]
        static = sum(v for k, v in budget["static"].items() if not k.startswith("of which"))
        fixed = sum(budget["fixed"].values())
        return PlannedMemory(planned_mb=round((static + int(plan["predicted_bytes"])) / MiB, 1),
                             budget_mb=round((budget["total"] * budget["safety_factor"] - fixed) / MiB, 1),
                             device_total_mb=round(budget["total"] / MiB, 1), device=str(budget["device"]))
    except (TypeError, KeyError, AttributeError):
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _str_or_none(value: Any) -> str | None:
    return None if value in (None, "") else str(value)
