"""``resume``: the stages of a run (or of every run of a sweep) that are not done, plus their
dependants, launched with the executor the run was launched with. Stages still queued on SLURM are
kept and waited on; overrides (e.g. more memory) are frozen into the run's profile first.
"""
from __future__ import annotations

import os
from pathlib import Path

from jobs import slurm
from jobs.errors import LaunchError
from jobs.launch import Launcher, RunPlan, launch_chains
from jobs.local import LocalLauncher, run_local
from jobs.records import latest_records, launched_with
from jobs.selection import chain_dependencies, done_states, plan_resume
from jobs.submit import SlurmLauncher, format_submitted
from jobs.sweep import SWEEPS_DIR, sweep_runs
from pipeline.config import Profile
from pipeline.runs import RunDir


def resume(path: str | os.PathLike, overrides: list[str]) -> list[RunPlan]:
    """Launch the stages of a run (or of every run of a sweep folder) that are not done, plus their
    dependants, nothing else. ``overrides`` (e.g. more memory) are frozen into each run's profile."""
    runs = sweep_runs(path)
    sweep = Path(path).resolve() if runs is not None else None
    plans: dict[str, list[RunPlan]] = {"slurm": [], "local": []}
    for run in runs if runs is not None else [RunDir(path)]:
        planned = _resume_plan(run, overrides)
        if planned is not None:
            plans[planned[1]].append(planned[0])
    for plan in plans["local"]:
        run_local(plan, "resume")
    if plans["slurm"]:
        launched = launch_chains(plans["slurm"], SlurmLauncher(logs_root=sweep), "resume")
        for plan, records in zip(plans["slurm"], launched):
            print(f"run {plan.run.path}")
            print(format_submitted(plan, records))
    return plans["local"] + plans["slurm"]


def _resume_plan(run: RunDir, overrides: list[str]) -> tuple[RunPlan, str] | None:
    """What to relaunch in ``run`` and with which executor; None when nothing is left to do."""
    if not run.profile_path.exists():
        raise LaunchError(f"{run.path} is not a run directory (no profile.yaml); runs are runs/<profile>/<run_id> "
                          f"and sweeps runs/{SWEEPS_DIR}/<id>")
    profile = run.profile(overrides)
    kind = launched_with(run) or _default_executor(profile)
    if kind == "slurm":
        slurm.require_slurm(profile.name)
    states = done_states(run, profile)
    queued = queued_jobs(run) if kind == "slurm" else {}
    launch, keep = plan_resume(profile.stages, chain_dependencies(profile.task, profile.stages),
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
    return RunPlan(run, profile, launch, {s: queued[s] for s in keep}), kind


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
