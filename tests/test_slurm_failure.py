"""A failing stage on the real local cluster: its dependants are cancelled (not left pending), status
names the failed stage and its log, and after the fix resume relaunches only it and its dependants.

The corrupted input is a truncated split of the graph cache, as a full disk or an interrupted copy
to shared storage leaves it: preprocess still finds the cache's manifest and is done, the teacher
fails reading train.pt.
"""
from __future__ import annotations

import shutil

import pytest

from jobs.records import latest_records
from jobs.status import status_report
from tests.launch_helpers import (
    CHAIN,
    cancel_on_failure,
    copy_cache,
    job_ids,
    only_run,
    run_cli,
    wait_jobs_ended,
    wait_settled,
)

pytest_plugins = ["tests.slurm_cluster"]
pytestmark = pytest.mark.slurm


def test_failed_stage_cancels_dependants_and_resume_relaunches_only_them(slurm_cluster, ci_cache, tmp_path, capsys):
    cache = copy_cache(ci_cache, tmp_path / "cache")
    (train,) = cache.glob("*/train.pt")
    pristine = ci_cache / train.parent.name / "train.pt"
    train.write_bytes(pristine.read_bytes()[: train.stat().st_size // 2])

    run_cli("submit", "--profile", "ci", "--runs-root", str(tmp_path / "runs"), "-O", f"data.cache_dir={cache}")
    run = only_run(tmp_path / "runs")
    first = job_ids(run)
    with cancel_on_failure(slurm_cluster, lambda: [run]):
        states = wait_settled(run, CHAIN, timeout=240)
        assert states == {"preprocess": "done", "teacher": "failed", "evaluate": "cancelled"}, status_report(run.path)
        assert slurm_cluster.wait_state(first["evaluate"], timeout=60) == "CANCELLED"
        assert not (run.path / "evaluate" / "status.json").exists(), "the dependant started although teacher failed"

        capsys.readouterr()
        run_cli("status", "--run", str(run.path))
        out = capsys.readouterr().out
        assert "stage teacher failed: ValueError: graph cache split " in out and "unreadable" in out
        assert f"  log: {run.path / 'teacher' / 'log'}" in out
        assert "Traceback" in (run.path / "teacher" / "log").read_text()
        assert f"make resume RUN={run.path}" in out
        assert "evaluate" not in out.split("stage teacher failed")[1]  # the dependant is not reported as a cause

        shutil.copyfile(pristine, train)  # the fix
        run_cli("resume", "--run", str(run.path))
        second = job_ids(run)
        assert second["preprocess"] == first["preprocess"]  # done: not submitted again
        assert second["teacher"] != first["teacher"] and second["evaluate"] != first["evaluate"]
        records = latest_records(run)
        assert records["teacher"]["depends_on"] == [] and records["evaluate"]["depends_on"] == [second["teacher"]]
        assert [r["stage"] for r in run.read_jobs()["history"] if r["action"] == "resume"] == ["teacher", "evaluate"]

        assert wait_settled(run, CHAIN, timeout=240) == dict.fromkeys(CHAIN, "done")
        ended = wait_jobs_ended(slurm_cluster, [run])
        assert [ended[second[s]] for s in ("teacher", "evaluate")] == ["COMPLETED", "COMPLETED"]
        assert ended[first["teacher"]] == "FAILED"
