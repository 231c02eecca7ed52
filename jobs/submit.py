"""``submit``: the stages of new runs queued on SLURM at once, each waiting on the stages it reads.

A single run becomes a chain of sbatch jobs linked by ``afterok``; a sweep (several profiles or
seeds) becomes one job array per stage where the runs' resources match (``aftercorr``). The
launcher here is also what ``jobs.resume`` uses for runs that were submitted.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import submitit

from jobs import slurm
from jobs.errors import LaunchError
from jobs.launch import RunPlan, job_record, launch_chains
from jobs.resources import describe, executor_parameters, rank_layout
from jobs.stage_job import StageJob
from jobs.sweep import SWEEPS_DIR, array_name, sweep_profiles, write_sweep
from jobs.table import format_table
from pipeline.config import Profile
from pipeline.runs import RUNS_DIR, RunDir, new_run_id


class SlurmLauncher:
    """Submits with sbatch through submitit; logs in <logs_root>/logs/<job id>/ (the run, or a sweep's folder)."""

    kind = "slurm"

    def __init__(self, logs_root: Path | None = None) -> None:
        self.logs_root = logs_root
        """Folder whose logs/ holds every job of this launch; None: each run's own folder."""

    def _executor(self, run_path: Path, params: dict[str, Any]) -> submitit.AutoExecutor:
        executor = submitit.AutoExecutor(folder=(self.logs_root or run_path) / "logs" / "%j", cluster="slurm")
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
        stage_job = StageJob(plan.profile.resources_for(stage).cpus, finish=True)
        job = executor.submit(stage_job, str(plan.run.path), stage, ())
        return job_record(plan, stage, job, depends_on, params, action, self.kind), job

    def start_array(self, plans: list[RunPlan], stage: str, upstream_arrays: list[str],
                    action: str) -> list[tuple[dict[str, Any], Any]]:
        """One job array for ``stage`` of ``plans`` (task i = plans[i]), after task i of each upstream array."""
        params = executor_parameters(plans[0].profile, stage, upstream_arrays, dependency="aftercorr")
        params["name"] = array_name([p.profile for p in plans], stage)
        executor = self._executor(plans[0].run.path, params)
        cpus = plans[0].profile.resources_for(stage).cpus
        with executor.batch():
            jobs = [executor.submit(StageJob(cpus, finish=True), str(plan.run.path), stage, ()) for plan in plans]
        out = []
        for index, (plan, job) in enumerate(zip(plans, jobs)):
            record = job_record(plan, stage, job, [f"{a}_{index}" for a in upstream_arrays], params, action, self.kind)
            record["array"] = {"id": slurm.array_base(str(job.job_id)), "index": index, "size": len(plans)}
            out.append((record, job))
        return out

    def settle(self, plan: RunPlan, stage: str, record: dict[str, Any], job: Any) -> None:
        return None


def submit(spec: str, overrides: list[str], seeds: int = 1, runs_root: str | os.PathLike | None = None) -> list[RunPlan]:
    """Create one run per profile of ``spec`` (comma-separated) and seed, and queue their chains on
    SLURM: a single run as a chain of jobs, a sweep as one job array per stage where resources match.
    Nothing is written if sbatch is missing or a profile is invalid."""
    slurm.require_slurm(spec.split(",")[0])
    runs = sweep_profiles(spec, overrides, seeds)
    root = Path(runs_root or RUNS_DIR)
    run_id = new_run_id()
    sweep = root / SWEEPS_DIR / run_id if len(runs) > 1 else None
    launcher = SlurmLauncher(logs_root=sweep)
    for profile, suffix in runs:
        for stage in profile.stages:
            launcher.check(root / profile.name / f"{run_id}{suffix}", profile, stage)
    plans = [RunPlan(RunDir.create(p, root=root, run_id=f"{run_id}{suffix}"), p, list(p.stages)) for p, suffix in runs]
    if sweep is not None:
        sweep.mkdir(parents=True, exist_ok=True)
        write_sweep(sweep, [p.run for p in plans], [])
    launched = launch_chains(plans, launcher, "submit")
    for plan, records in zip(plans, launched):
        print(f"run {plan.run.path}")
        print(format_submitted(plan, records))
        print(f"follow with: make status RUN={plan.run.path}\n")
    if sweep is not None:
        arrays = _submissions_summary(launched)
        write_sweep(sweep, [p.run for p in plans], arrays)
        print(f"sweep of {len(plans)} runs in {len(arrays)} submissions: {_describe_submissions(arrays)}")
        print(f"follow all runs with: make status RUN={sweep}")
    return plans


def _describe_submissions(entries: list[dict[str, Any]]) -> str:
    """'preprocess 101[4], teacher 102[4], ...': [n] marks an array of n tasks."""
    return ", ".join(f"{e['stage']} {e['job_id']}" + (f"[{e['size']}]" if e["size"] > 1 else "") for e in entries)


def _submissions_summary(launched: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per sbatch call of a sweep: the stage, its job (or array) id and how many runs it holds."""
    seen: dict[str, dict[str, Any]] = {}
    for records in launched:
        for stage, record in records.items():
            job_id = record["array"]["id"] if "array" in record else record["job_id"]
            entry = seen.setdefault(job_id, {"stage": stage, "job_id": job_id, "size": 0})
            entry["size"] += 1
    return list(seen.values())


def format_submitted(plan: RunPlan, records: dict[str, dict[str, Any]]) -> str:
    """The table printed after a submission: each stage's job, what it waits for, its resources and log."""
    rows = [
        (stage, rec["job_id"], ",".join(rec["depends_on"]) or None,
         describe(plan.profile.resources_for(stage), _ranks(plan.profile, stage)), rec["stderr"])
        for stage, rec in records.items()
    ]
    return format_table(("stage", "job", "after", "resources", "log"), rows)


def _ranks(profile: Profile, stage: str) -> int:
    nodes, tasks = rank_layout(profile, stage)
    return nodes * tasks
