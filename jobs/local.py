"""``dry-run``: a run's chain through submitit's local executor, one stage at a time, waiting for
each and printing how it went; a failed stage becomes one ``StageFailed`` line that names its error
and logs. Also what ``jobs.resume`` uses for runs that were launched locally.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from jobs.errors import LaunchError, StageFailed
from jobs.launch import RunPlan, failure_summary, job_record, launch_chains
from jobs.resources import executor_parameters
from jobs.stage_job import StageJob
from pipeline.config import Profile, load_profile
from pipeline.runs import RunDir


class LocalLauncher:
    """Runs each stage as a local submitit job (a subprocess per rank) and waits for it; logs in <run>/logs/."""

    kind = "local"

    def _executor(self, run_path: Path, params: dict[str, Any]) -> submitit.AutoExecutor:
        executor = submitit.AutoExecutor(folder=run_path / "logs", cluster="local")
        executor.update_parameters(**params)
        return executor

    @staticmethod
    def check_parameters(profile: Profile, stage: str) -> dict[str, Any]:
        """The executor parameters of ``stage``; refuses what one machine cannot run (several nodes)."""
        params = executor_parameters(profile, stage)
        if params.get("nodes", 1) > 1:
            raise LaunchError(f"profile {profile.name!r}: stage {stage} asks for {params['nodes']} nodes, and the local "
                              f"executor runs on this machine only; add -O resources.{stage}.nodes=1 here "
                              f"(make submit runs it on {params['nodes']} nodes)")
        return params

    def check(self, run_path: Path, profile: Profile, stage: str) -> None:
        self.check_parameters(profile, stage)

    def start(self, plan: RunPlan, stage: str, depends_on: list[str], action: str) -> tuple[dict[str, Any], Any]:
        # Stages run one after another here, so no dependency is passed to the executor.
        params = self.check_parameters(plan.profile, stage)
        executor = self._executor(plan.run.path, params)
        job = executor.submit(StageJob(plan.profile.resources_for(stage).cpus), str(plan.run.path), stage, ())
        log = plan.run.path / stage / "log"
        ranks = f", {params['tasks_per_node']} ranks" if params.get("tasks_per_node", 1) > 1 else ""
        print(f"{_step(plan, stage)} {stage}: started (local job {job.job_id}{ranks}, log {log})", flush=True)
        return job_record(plan, stage, job, depends_on, params, action, self.kind), job

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


def dry_run_overrides(name: str, overrides: list[str]) -> list[str]:
    """The profile's ``dry_run`` slice (rows per file, epochs) under the user's own -O, which win."""
    return [*load_profile(name, overrides).dry_run.overrides(), *overrides]


def dry_run(name: str, overrides: list[str], runs_root: str | os.PathLike | None = None) -> RunDir:
    """The profile's chain through the local executor, one stage at a time, in a new run dir."""
    profile = load_profile(name, dry_run_overrides(name, overrides))
    for stage in profile.stages:  # refused before the run directory exists: nothing is left behind
        LocalLauncher.check_parameters(profile, stage)
    run = RunDir.create(profile, root=runs_root)
    rows = "all rows" if profile.data.limit_rows is None else f"at most {profile.data.limit_rows} rows per file"
    print(f"dry-run of {profile.name} ({rows}, {profile.train.epochs} epochs) in {run.path}", flush=True)
    run_local(RunPlan(run, profile, list(profile.stages)), "dry-run")
    return run


def run_local(plan: RunPlan, action: str) -> None:
    """Run ``plan``'s stages here, one after another, then print what the run is for (its metrics)
    and take the chain's last step (its report and tracking import, ``jobs.track``)."""
    try:
        launch_chains([plan], LocalLauncher(), action)
    except StageFailed as exc:
        raise exc.with_hint(f"after fixing it: make resume RUN={plan.run.path}") from None
    print(f"finished: {plan.run.path}")
    print_metrics(plan.run, plan.profile)
    from jobs.track import finish_run  # matplotlib and mlflow: only once a chain has finished

    finish_run(plan.run)


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
