"""submit, dry-run and resume: the stages of a run become a chain of submitit jobs.

``submit`` hands the whole chain to SLURM at once, each stage waiting on the stages it reads
(``afterok``). ``dry-run`` sends the same chain, stage by stage, through submitit's local
executor and waits for each. ``resume`` launches only what is not done, with the executor the run
was launched with. Everything launched is appended to <run>/jobs.json.
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import submitit
from submitit.core.utils import UncompletedJobError

from pipeline.config import Profile, load_profile
from pipeline.runs import RUNS_DIR, RunDir

from jobs import slurm
from jobs.errors import LaunchError, StageFailed
from jobs.records import append_records, launched_with, latest_records, now_iso
from jobs.resources import describe, executor_parameters
from jobs.selection import chain_dependencies, done_states, plan_resume
from jobs.stage_job import StageJob
from jobs.table import format_table


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

    def settle(self, plan: RunPlan, stage: str, record: dict[str, Any], job: Any) -> None:
        """After submission: nothing for SLURM; wait for the result for the local executor."""


# -- executors -----------------------------------------------------------------------------------

def _record(plan: RunPlan, stage: str, job: Any, depends_on: list[str], params: dict, action: str,
            kind: str) -> dict[str, Any]:
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
    }


class SlurmLauncher:
    """Submits with sbatch through submitit; logs in <run>/logs/<job id>/."""

    kind = "slurm"

    def _executor(self, run_path: Path, params: dict[str, Any]) -> submitit.AutoExecutor:
        executor = submitit.AutoExecutor(folder=run_path / "logs" / "%j", cluster="slurm")
        executor.update_parameters(**params)
        return executor

    def check(self, run_path: Path, profile: Profile, stage: str) -> None:
        # submitit renders the sbatch script on update_parameters and rejects unknown options.
        try:
            self._executor(run_path, executor_parameters(profile, stage))
        except (ValueError, NameError, AssertionError) as exc:
            raise LaunchError(f"stage {stage}: submitit rejects its resources: {exc}") from None

    def start(self, plan: RunPlan, stage: str, depends_on: list[str], action: str) -> tuple[dict[str, Any], Any]:
        params = executor_parameters(plan.profile, stage, depends_on)
        executor = self._executor(plan.run.path, params)
        job = executor.submit(StageJob(plan.profile.resources_for(stage).cpus), str(plan.run.path), stage, ())
        return _record(plan, stage, job, depends_on, params, action, self.kind), job

    def settle(self, plan: RunPlan, stage: str, record: dict[str, Any], job: Any) -> None:
        return None


class LocalLauncher:
    """Runs each stage as a local submitit job (a subprocess) and waits for it; logs in <run>/logs/."""

    kind = "local"

    def _executor(self, run_path: Path, params: dict[str, Any]) -> submitit.AutoExecutor:
        executor = submitit.AutoExecutor(folder=run_path / "logs", cluster="local")
        executor.update_parameters(**params)
        return executor

    def check(self, run_path: Path, profile: Profile, stage: str) -> None:
        executor_parameters(profile, stage)

    def start(self, plan: RunPlan, stage: str, depends_on: list[str], action: str) -> tuple[dict[str, Any], Any]:
        # Stages run one after another here, so no dependency is passed to the executor.
        params = executor_parameters(plan.profile, stage)
        executor = self._executor(plan.run.path, params)
        job = executor.submit(StageJob(plan.profile.resources_for(stage).cpus), str(plan.run.path), stage, ())
        log = plan.run.path / stage / "log"
        print(f"{_step(plan, stage)} {stage}: started (local job {job.job_id}, log {log})", flush=True)
        return _record(plan, stage, job, depends_on, params, action, self.kind), job

    def settle(self, plan: RunPlan, stage: str, record: dict[str, Any], job: Any) -> None:
        try:
            result = job.result()
        except KeyboardInterrupt:
            job.cancel(check=False)
            raise
        except UncompletedJobError:
            # No result at all: the process was killed (out of memory, a signal) before it could say why.
            error = plan.run.read_status(stage).get("error") or "the job ended without a result (killed?)"
            raise StageFailed(stage, error, self._logs(plan, stage, record)) from None
        except Exception as exc:  # the stage raised; submitit re-raises it as FailedJobError
            error = plan.run.read_status(stage).get("error") or failure_summary(str(exc))
            raise StageFailed(stage, error, self._logs(plan, stage, record)) from None
        print(f"{_step(plan, stage)} {stage}: {_outcome(result)}", flush=True)

    @staticmethod
    def _logs(plan: RunPlan, stage: str, record: dict[str, Any]) -> list[str]:
        logs = [str(plan.run.path / stage / "log"), record["stderr"]]
        return [p for p in logs if Path(p).exists()] or logs


def _outcome(result: Any) -> str:
    """What the runner's done record says: its own time and peak memory (the job adds start-up)."""
    if not isinstance(result, dict) or result.get("elapsed_s") is None:
        return "done"
    peak = f", peak {result['peak_rss_mb']:.0f} MB" if result.get("peak_rss_mb") else ""
    return f"done in {result['elapsed_s']:.1f}s{peak}"


def _step(plan: RunPlan, stage: str) -> str:
    return f"[{plan.stages.index(stage) + 1}/{len(plan.stages)}]"


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


# -- the chain -----------------------------------------------------------------------------------

def launch_chains(plans: list[RunPlan], launcher: Launcher, action: str) -> list[dict[str, dict[str, Any]]]:
    """Launch every plan's stages; stage-major, so a sweep submits stage k of all runs together.

    All parameters are checked before the first job is submitted. If SLURM refuses a job part way,
    the jobs this call already submitted are cancelled, so no run is left with half a chain queued.
    """
    for plan in plans:
        for stage in plan.stages:
            launcher.check(plan.run.path, plan.profile, stage)
    launched: list[dict[str, dict[str, Any]]] = [{} for _ in plans]
    order = plans[0].profile.stages if plans else []
    for stage in order:
        for plan, records in zip(plans, launched):
            if stage not in plan.stages:
                continue
            depends_on = _dependency_ids(plan, stage, records)
            try:
                record, job = launcher.start(plan, stage, depends_on, action)
            except (LaunchError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise _refused(launcher, plan, stage, exc, launched) from None
            append_records(plan.run, launcher.kind, [record])
            records[stage] = record
            launcher.settle(plan, stage, record, job)
    return launched


def _dependency_ids(plan: RunPlan, stage: str, records: dict[str, dict[str, Any]]) -> list[str]:
    ids = []
    for dep in chain_dependencies(plan.profile.stages)[stage]:
        if dep in records:
            ids.append(records[dep]["job_id"])
        elif dep in plan.queued:
            ids.append(plan.queued[dep])
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


# -- commands ------------------------------------------------------------------------------------

def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def sweep_profiles(name: str, overrides: list[str], seeds: int) -> list[Profile]:
    """One profile per seed: train.seed, train.seed+1, ... (one run each)."""
    if seeds < 1:
        raise LaunchError(f"--seeds must be at least 1, got {seeds}")
    base = load_profile(name, overrides)
    if seeds == 1:
        return [base]
    return [load_profile(name, [*overrides, f"train.seed={base.train.seed + i}"]) for i in range(seeds)]


def submit(name: str, overrides: list[str], seeds: int = 1, runs_root: str | os.PathLike | None = None) -> list[RunPlan]:
    """Create one run per seed and queue its chain on SLURM; nothing is written if sbatch is missing."""
    slurm.require_slurm(name)
    profiles = sweep_profiles(name, overrides, seeds)
    root = Path(runs_root or RUNS_DIR)
    run_id = new_run_id()
    ids = [run_id] if seeds == 1 else [f"{run_id}-seed{p.train.seed}" for p in profiles]
    launcher = SlurmLauncher()
    for profile, rid in zip(profiles, ids):
        for stage in profile.stages:
            launcher.check(root / profile.name / rid, profile, stage)
    plans = [RunPlan(RunDir.create(p, root=root, run_id=rid), p, list(p.stages)) for p, rid in zip(profiles, ids)]
    launched = launch_chains(plans, launcher, "submit")
    for plan, records in zip(plans, launched):
        print(f"run {plan.run.path}")
        print(format_submitted(plan, records))
        print(f"follow with: make status RUN={plan.run.path}\n")
    return plans


def format_submitted(plan: RunPlan, records: dict[str, dict[str, Any]]) -> str:
    rows = [
        (stage, rec["job_id"], ",".join(rec["depends_on"]) or None,
         describe(plan.profile.resources_for(stage)), rec["stderr"])
        for stage, rec in records.items()
    ]
    return format_table(("stage", "job", "after", "resources", "log"), rows)


def dry_run_overrides(name: str, overrides: list[str]) -> list[str]:
    """The profile's ``dry_run`` slice (rows per file, epochs) under the user's own -O, which win."""
    return [*load_profile(name, overrides).dry_run.overrides(), *overrides]


def dry_run(name: str, overrides: list[str], runs_root: str | os.PathLike | None = None) -> RunDir:
    """The profile's chain through the local executor, one stage at a time, in a new run dir."""
    profile = load_profile(name, dry_run_overrides(name, overrides))
    for stage in profile.stages:
        executor_parameters(profile, stage)
    run = RunDir.create(profile, root=runs_root)
    rows = "all rows" if profile.data.limit_rows is None else f"at most {profile.data.limit_rows} rows per file"
    print(f"dry-run of {profile.name} ({rows}, {profile.train.epochs} epochs) in {run.path}", flush=True)
    _run_local(RunPlan(run, profile, list(profile.stages)), "dry-run")
    return run


def _run_local(plan: RunPlan, action: str) -> None:
    try:
        launch_chains([plan], LocalLauncher(), action)
    except StageFailed as exc:
        raise StageFailed(exc.stage, exc.error, exc.logs, f"after fixing it: make resume RUN={plan.run.path}") from None
    print(f"finished: {plan.run.path}")
    print_metrics(plan.run, plan.profile)


def print_metrics(run: RunDir, profile: Profile) -> None:
    """The evaluate stage's table, which is what a demo or dry-run is for."""
    if "evaluate" not in profile.stages:
        return
    path = run.path / "evaluate" / "metrics.md"
    if not path.exists():
        print(f"evaluate finished but wrote no {path}")
        return
    print(f"metrics: {path}\n")
    print(path.read_text().rstrip())


def resume(run_path: str | os.PathLike, overrides: list[str]) -> RunPlan | None:
    """Launch the stages of ``run_path`` that are not done (plus their dependants), nothing else."""
    run = RunDir(run_path)
    if not run.profile_path.exists():
        raise LaunchError(f"{run.path} is not a run directory (no profile.yaml); runs are runs/<profile>/<run_id>")
    profile = run.profile(overrides)
    kind = launched_with(run) or _default_executor(profile)
    if kind == "slurm":
        slurm.require_slurm(profile.name)
    states = done_states(run, profile)
    queued = queued_jobs(run) if kind == "slurm" else {}
    launch, keep = plan_resume(profile.stages, chain_dependencies(profile.stages),
                               {s for s, st in states.items() if st == "done"}, set(queued))
    launcher: Launcher = SlurmLauncher() if kind == "slurm" else LocalLauncher()
    for stage in launch:
        launcher.check(run.path, profile, stage)
    if overrides:
        run.freeze(profile)
    kept = ", ".join(f"{s} (job {queued[s]})" for s in keep)
    if not launch:
        print(f"nothing to resume in {run.path}: " + (f"still queued: {kept}" if keep else "every stage is done"))
        return None
    replaced = [queued[s] for s in launch if s in queued]
    if replaced:
        slurm.cancel(replaced)
    print(f"resuming {run.path} ({kind}): launching {', '.join(launch)}" + (f"; waiting on {kept}" if keep else ""))
    plan = RunPlan(run, profile, launch, {s: queued[s] for s in keep})
    if kind == "local":
        _run_local(plan, "resume")
    else:
        records = launch_chains([plan], launcher, "resume")[0]
        print(format_submitted(plan, records))
    return plan


def _default_executor(profile: Profile) -> str:
    """For runs made without jobs/ (e.g. by pipeline.cli): the profile's choice, else what is here."""
    if profile.executor in ("slurm", "local"):
        return profile.executor
    return "local" if slurm.missing_commands() else "slurm"


def queued_jobs(run: RunDir) -> dict[str, str]:
    """stage -> job id for stages whose newest job is still pending or running in SLURM."""
    records = latest_records(run)
    info = slurm.query_sacct(rec["job_id"] for rec in records.values())
    if info is None:
        if records:
            print("warning: sacct gave no answer, so jobs still in the queue cannot be seen; "
                  "check squeue and scancel leftovers of this run before resuming")
        return {}
    return {
        stage: rec["job_id"]
        for stage, rec in records.items()
        if rec["job_id"] in info and info[rec["job_id"]].state in slurm.ACTIVE_STATES
    }
