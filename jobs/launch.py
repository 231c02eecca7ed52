"""A run's chain of stages launched through an executor: the plan, the launcher protocol, and the
stage-by-stage walk that checks everything first and cancels what it submitted if one job is refused.

The executors are elsewhere: ``jobs.submit`` (SLURM, ``make submit``), ``jobs.local`` (submitit's
local executor, ``make dry-run``) and ``jobs.resume`` (the stages that are not done, with the
executor the run was launched with). Everything launched is appended to <run>/jobs.json.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jobs import slurm
from jobs.errors import LaunchError
from jobs.records import append_records, now_iso
from jobs.resources import executor_parameters
from jobs.selection import chain_dependencies
from jobs.sweep import group_submissions, stage_order
from pipeline.config import Profile
from pipeline.provenance import git_commit
from pipeline.runs import RunDir


@dataclass
class RunPlan:
    """What to launch in one run directory."""

    run: RunDir
    profile: Profile
    stages: list[str]
    """Stages to launch, in chain order."""
    queued: dict[str, str] = field(default_factory=dict)
    """Stages already in the queue (resume): stage -> job id to depend on."""


class Launcher(Protocol):
    kind: str

    def check(self, run_path: Path, profile: Profile, stage: str) -> None:
        """Raise before anything is submitted if the stage's parameters are invalid."""

    def start(self, plan: RunPlan, stage: str, depends_on: list[str], action: str) -> tuple[dict[str, Any], Any]:
        """Submit one stage; return its jobs.json record and the submitit job."""

    def start_array(self, plans: list[RunPlan], stage: str, upstream_arrays: list[str],
                    action: str) -> list[tuple[dict[str, Any], Any]]:
        """Submit ``stage`` of ``plans`` as one job array; one (record, job) per plan."""

    def settle(self, plan: RunPlan, stage: str, record: dict[str, Any], job: Any) -> None:
        """After submission: nothing for SLURM; wait for the result for the local executor."""


def job_record(plan: RunPlan, stage: str, job: Any, depends_on: list[str], params: dict, action: str,
               kind: str) -> dict[str, Any]:
    """The jobs.json record of one submitted stage (layout in ``jobs.records``)."""
    return {
        "stage": stage,
        "job_id": str(job.job_id),
        "executor": kind,
        "action": action,
        "submitted": now_iso(),
        "depends_on": list(depends_on),
        "stdout": str(job.paths.stdout),
        "stderr": str(job.paths.stderr),
        "resources": plan.profile.resources_for(stage).model_dump(mode="json"),
        "params": params,
        "git_commit": git_commit(),
    }


def failure_summary(text: str) -> str:
    """The line that says what went wrong: a traceback's last line, else the first line."""
    marker = "Traceback (most recent call last)"
    if marker in text:
        # submitit wraps the job's traceback between dashed lines; its last line is the exception.
        body = text.rsplit(marker, 1)[1].split("-" * 22, 1)[0]
        tail = [line.strip() for line in body.splitlines() if line.strip()]
        if tail:
            return tail[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def launch_chains(plans: list[RunPlan], launcher: Launcher, action: str) -> list[dict[str, dict[str, Any]]]:
    """Launch every plan's stages, stage by stage over all plans, so that a sweep submits each stage
    of all its runs together: as job arrays where the runs allow it (``jobs.sweep``).

    All parameters are checked before the first job is submitted. If SLURM refuses a job part way,
    the jobs this call already submitted are cancelled, so no run is left with half a chain queued.
    Returns, per plan, stage -> the jobs.json record of what was launched.
    """
    for plan in plans:
        for stage in plan.stages:
            launcher.check(plan.run.path, plan.profile, stage)
    launched: list[dict[str, dict[str, Any]]] = [{} for _ in plans]
    for stage in stage_order([p.stages for p in plans]):
        members = [i for i, plan in enumerate(plans) if stage in plan.stages]
        keys = {i: _array_key(plans[i], stage) for i in members}
        upstream = {i: _dependency_ids(plans[i], stage, launched[i]) for i in members}
        for sub in group_submissions(stage, members, keys, upstream, arrays=launcher.kind == "slurm"):
            group = [plans[i] for i in sub.members]
            try:
                if sub.array:
                    started = launcher.start_array(group, stage, list(sub.depends_on), action)
                else:
                    started = [launcher.start(group[0], stage, list(sub.depends_on), action)]
            except (LaunchError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise _refused(launcher, group[0], stage, exc, launched) from None
            for i, (record, job) in zip(sub.members, started):
                append_records(plans[i].run, launcher.kind, [record])
                launched[i][stage] = record
                launcher.settle(plans[i], stage, record, job)
    return launched


def _array_key(plan: RunPlan, stage: str) -> str:
    """Runs whose stage has equal sbatch parameters (but for the job name) can share an array."""
    params = {k: v for k, v in executor_parameters(plan.profile, stage).items() if k != "name"}
    return json.dumps(params, sort_keys=True, default=str)


def _dependency_ids(plan: RunPlan, stage: str, records: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Upstream stage -> the job id ``stage`` of this run waits for (launched now, or still queued)."""
    ids = {}
    for dep in chain_dependencies(plan.profile.task, plan.profile.stages)[stage]:
        if dep in records:
            ids[dep] = records[dep]["job_id"]
        elif dep in plan.queued:
            ids[dep] = plan.queued[dep]
    return ids


def _refused(launcher: Launcher, plan: RunPlan, stage: str, exc: Exception, launched: list[dict[str, dict]]) -> LaunchError:
    """Cancel what this call submitted and explain how to go on."""
    ids = [rec["job_id"] for records in launched for rec in records.values()]
    note = ""
    if ids and launcher.kind == "slurm":
        failed = slurm.cancel(ids)
        note = f"; cancelled the {len(ids)} job(s) already submitted ({', '.join(ids)})"
        if failed:
            note += f", but scancel failed for {', '.join(failed)}: cancel them by hand"
    detail = failure_summary(str(exc)) if str(exc) else type(exc).__name__
    return LaunchError(
        f"{launcher.kind} refused stage {stage} of {plan.run.path}: {detail}{note}. "
        f"Fix the cause, then: make resume RUN={plan.run.path} [O='resources.{stage}.<key>=<value>']"
    )
