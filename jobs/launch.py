"""submit, dry-run and resume: the stages of a run become a chain of submitit jobs.

``submit`` hands the whole chain to SLURM at once, each stage waiting on the stages it reads
(``afterok``). ``dry-run`` sends the same chain, stage by stage, through submitit's local
executor and waits for each. ``resume`` launches only what is not done, with the executor the run
was launched with. Everything launched is appended to <run>/jobs.json.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from jobs import slurm
from jobs.errors import LaunchError, StageFailed
from jobs.records import append_records, latest_records, launched_with, now_iso
from jobs.resources import describe, executor_parameters, rank_layout
from jobs.selection import chain_dependencies, done_states, plan_resume
from jobs.stage_job import StageJob
from jobs.sweep import SWEEPS_DIR, array_name, group_submissions, stage_order, sweep_profiles, sweep_runs, write_sweep
from jobs.table import format_table
from pipeline.config import Profile, load_profile
from pipeline.runs import RUNS_DIR, RunDir, new_run_id


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
        job = executor.submit(StageJob(plan.profile.resources_for(stage).cpus), str(plan.run.path), stage, ())
        return _record(plan, stage, job, depends_on, params, action, self.kind), job

    def start_array(self, plans: list[RunPlan], stage: str, upstream_arrays: list[str],
                    action: str) -> list[tuple[dict[str, Any], Any]]:
        """One job array for ``stage`` of ``plans`` (task i = plans[i]), after task i of each upstream array."""
        params = executor_parameters(plans[0].profile, stage, upstream_arrays, dependency="aftercorr")
        params["name"] = array_name([p.profile for p in plans], stage)
        executor = self._executor(plans[0].run.path, params)
        cpus = plans[0].profile.resources_for(stage).cpus
        with executor.batch():
            jobs = [executor.submit(StageJob(cpus), str(plan.run.path), stage, ()) for plan in plans]
        out = []
        for index, (plan, job) in enumerate(zip(plans, jobs)):
            record = _record(plan, stage, job, [f"{a}_{index}" for a in upstream_arrays], params, action, self.kind)
            record["array"] = {"id": slurm.array_base(str(job.job_id)), "index": index, "size": len(plans)}
            out.append((record, job))
        return out

    def settle(self, plan: RunPlan, stage: str, record: dict[str, Any], job: Any) -> None:
        return None


class LocalLauncher:
    """Runs each stage as a local submitit job (a subprocess per rank) and waits for it; logs in <run>/logs/."""

    kind = "local"

    def _executor(self, run_path: Path, params: dict[str, Any]) -> submitit.AutoExecutor:
        executor = submitit.AutoExecutor(folder=run_path / "logs", cluster="local")
        executor.update_parameters(**params)
        return executor

    @staticmethod
    def _parameters(profile: Profile, stage: str) -> dict[str, Any]:
        params = executor_parameters(profile, stage)
        if params.get("nodes", 1) > 1:
            raise LaunchError(f"profile {profile.name!r}: stage {stage} asks for {params['nodes']} nodes, and the local "
                              f"executor runs on this machine only; add -O resources.{stage}.nodes=1")
        return params

    def check(self, run_path: Path, profile: Profile, stage: str) -> None:
        self._parameters(profile, stage)

    def start(self, plan: RunPlan, stage: str, depends_on: list[str], action: str) -> tuple[dict[str, Any], Any]:
        # Stages run one after another here, so no dependency is passed to the executor.
        params = self._parameters(plan.profile, stage)
        executor = self._executor(plan.run.path, params)
        job = executor.submit(StageJob(plan.profile.resources_for(stage).cpus), str(plan.run.path), stage, ())
        log = plan.run.path / stage / "log"
        ranks = f", {params['tasks_per_node']} ranks" if params.get("tasks_per_node", 1) > 1 else ""
        print(f"{_step(plan, stage)} {stage}: started (local job {job.job_id}{ranks}, log {log})", flush=True)
        return _record(plan, stage, job, depends_on, params, action, self.kind), job

    def start_array(self, plans: list[RunPlan], stage: str, upstream_arrays: list[str],
                    action: str) -> list[tuple[dict[str, Any], Any]]:
        raise LaunchError("the local executor runs one run at a time; job arrays are for SLURM")

    def settle(self, plan: RunPlan, stage: str, record: dict[str, Any], job: Any) -> None:
        try:
            result = job.results()[0]  # rank 0's: the one that writes the run's files
        except KeyboardInterrupt:
            job.cancel(check=False)
            raise
        except FailedJobError as exc:  # the stage raised: the message holds the job's traceback
            raise self._failed(plan, stage, record, failure_summary(str(exc)), _job_traceback(str(exc)),
                               expected=False) from None
        except UncompletedJobError:
            # No result at all: the process was killed (out of memory, a signal) before it could say
            # why; the fix is in its resources, not in the code.
            raise self._failed(plan, stage, record, "the job ended without a result (killed?)", "",
                               expected=True) from None
        print(f"{_step(plan, stage)} {stage}: {_outcome(result)}", flush=True)

    def _failed(self, plan: RunPlan, stage: str, record: dict[str, Any], fallback: str, detail: str,
                expected: bool) -> StageFailed:
        """The failure as the stage recorded it (its error, and whether the user can fix it), else
        what the job left: ``fallback`` and ``expected`` say what that is."""
        status = plan.run.read_status(stage)
        error = status.get("error")
        if error and status.get("user_error"):
            # recorded as "<ExceptionType>: <message>"; the message already names the file and the fix
            error, expected = error.partition(": ")[2] or error, True
        elif error:
            expected = False
        return StageFailed(stage, error or fallback, self._logs(plan, stage, record), expected=expected,
                           detail=detail)

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


def _job_traceback(text: str) -> str:
    """The job's traceback from submitit's FailedJobError message (between its dashed lines), else the message."""
    marker = "Traceback (most recent call last)"
    if marker not in text:
        return text
    return marker + text.rsplit(marker, 1)[1].split("-" * 22, 1)[0].rstrip()


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


# -- commands ------------------------------------------------------------------------------------

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
    rows = [
        (stage, rec["job_id"], ",".join(rec["depends_on"]) or None,
         describe(plan.profile.resources_for(stage), _ranks(plan.profile, stage)), rec["stderr"])
        for stage, rec in records.items()
    ]
    return format_table(("stage", "job", "after", "resources", "log"), rows)


def _ranks(profile: Profile, stage: str) -> int:
    nodes, tasks = rank_layout(profile, stage)
    return nodes * tasks


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
        raise exc.with_hint(f"after fixing it: make resume RUN={plan.run.path}") from None
    print(f"finished: {plan.run.path}")
    print_metrics(plan.run, plan.profile)


def print_metrics(run: RunDir, profile: Profile) -> None:
    """The evaluate stage's table, which is what a demo or dry-run is for (for knowledge graphs:
    the export's embedding reports)."""
    if profile.task == "kg":
        print_kg_reports(run, profile)
        return
    if "evaluate" not in profile.stages:
        return
    path = run.path / "evaluate" / "metrics.md"
    if not path.exists():
        print(f"evaluate finished but wrote no {path}")
        return
    print(f"metrics: {path}\n")
    print(path.read_text().rstrip())


def print_kg_reports(run: RunDir, profile: Profile) -> None:
    """One line per exported model (geometry and held-out link prediction) and where its report is."""
    record = run.done_record("export") if "export" in profile.stages else None
    if record is None:
        return
    for role, numbers in sorted(record.get("models", {}).items(), key=lambda item: item[0] != "teacher"):
        headline = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in numbers.items() if k != "dir")
        print(f"{role} embeddings: {headline}\n  report: {Path(numbers['dir']) / 'report.md'}")


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
        _run_local(plan, "resume")
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
