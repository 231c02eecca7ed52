"""Preemption on the real local cluster: a training stage interrupted mid-run comes back and finishes
with every epoch trained exactly once.

Two interruptions of one teacher job:

1. ``scancel --signal=USR2``: what SLURM sends ``signal_delay_s`` before the time limit and, with
   a grace time, on preemption. submitit calls ``StageJob.checkpoint`` and requeues the job itself.
2. ``scontrol requeue``: the scheduler takes the node away without warning; the job is killed
   mid-epoch and requeued by SLURM.

Both times the requeued job resumes from the ``checkpoint.pt`` of the last finished epoch.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.launch_helpers import cancel_on_failure, job_ids, only_run, run_cli, wait_for, wait_jobs_ended, wait_settled

pytest_plugins = ["tests.slurm_cluster"]
pytestmark = pytest.mark.slurm

EPOCHS = 30
"""An idle machine runs an epoch of this profile in under a second: enough epochs that the second
interruption still lands while the requeued job trains."""


def _epochs_done(run) -> list[int]:
    path = run.path / "teacher" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def test_interrupted_training_resumes_from_its_last_epoch(slurm_cluster, ci_cache, tmp_path):
    # Small batches make an epoch last a second or two, long enough to interrupt the job twice.
    run_cli("submit", "--profile", "ci", "--runs-root", str(tmp_path / "runs"), "-O", f"data.cache_dir={ci_cache}",
            "-O", "stages=[preprocess,teacher]", "-O", f"train.epochs={EPOCHS}", "-O", f"train.patience={EPOCHS}",
            "-O", "train.batch_size=4")
    run = only_run(tmp_path / "runs")
    job = job_ids(run)["teacher"]
    log = run.path / "teacher" / "log"
    with cancel_on_failure(slurm_cluster, lambda: [run]):
        def describe() -> str:
            return slurm_cluster.describe(job) + (log.read_text() if log.exists() else "")

        wait_for(lambda: len(_epochs_done(run)) >= 2, 180, "two finished epochs", describe)
        slurm_cluster.cmd("scancel", "--signal=USR2", job)
        at_signal = len(_epochs_done(run))
        wait_for(lambda: len(_epochs_done(run)) >= at_signal + 2, 180, "the requeued job's epochs", describe)
        assert len(_epochs_done(run)) < EPOCHS, "training finished before the second interruption; raise EPOCHS"
        slurm_cluster.cmd("scontrol", "requeue", job)

        assert wait_settled(run, ["preprocess", "teacher"], timeout=240) == {"preprocess": "done", "teacher": "done"}
        assert wait_jobs_ended(slurm_cluster, [run])[job] == "COMPLETED"

    text = log.read_text()
    assert "interrupted by the scheduler; requeueing" in text  # StageJob.checkpoint ran on USR2
    resumed = [int(k) for k in re.findall(r"resuming from \S+checkpoint\.pt after epoch (\d+)", text)]
    assert len(resumed) == 2 and all(k >= 2 for k in resumed), text
    # Every epoch exactly once in metrics.jsonl. The log has every epoch too, and each resume goes on
    # with the next epoch; one interrupted before its commit ran again, so it may show twice.
    assert _epochs_done(run) == list(range(1, EPOCHS + 1))
    logged = [int(k) for k in re.findall(rf"epoch (\d+)/{EPOCHS} train_loss", text)]
    assert sorted(set(logged)) == list(range(1, EPOCHS + 1)), logged
    assert len(logged) - len(set(logged)) <= len(resumed), logged
    for k in resumed:
        assert logged[logged.index(k) + 1] == k + 1
    done = json.loads((run.path / "teacher" / "done.json").read_text())
    assert done["epochs_run"] == EPOCHS
    assert slurm_cluster.job_history(job).count("REQUEUED") >= 2, slurm_cluster.describe(job)
