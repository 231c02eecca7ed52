"""The callable every submitted job runs: one stage of one run, requeued on timeout or preemption.

On SLURM's warning signal (USR2, ``signal_delay_s`` before the limit, or on preemption)
submitit calls :meth:`StageJob.checkpoint`, pickles what it returns and requeues the job. The
requeued job calls ``run_stage`` again: a finished stage is skipped by its done marker, a
training stage picks up from the ``checkpoint.pt`` its loop writes after every epoch (which one,
the hook reads from the run directory and the stage: ``pipeline.train.layout.active_checkpoint``).

A job submitted with ``finish`` (every SLURM stage job) takes the chain's last step after its stage
when that stage completed the chain: the run's report and its tracking import (``jobs.track``).

A job of several tasks (a data-parallel training stage) runs this callable once per task; each
exports torch's ``env://`` variables from submitit's ``TorchDistributedEnvironment`` first, and
the runner joins them into one process group. Only task 0 checkpoints and requeues (submitit).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import submitit

from pipeline.rank_watch import RANK_LOG_ENV
from pipeline.runner import run_stage
from pipeline.train.layout import active_checkpoint

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class StageJob(submitit.helpers.Checkpointable):
    """Runs ``pipeline.runner.run_stage(run_dir, stage, overrides)`` inside a job.

    Holds no state of its own beyond the cpu count and the ``finish`` flag, so the resubmitted copy
    is the same job: all progress lives in the run directory.
    """

    def __init__(self, cpus: int | None = None, finish: bool = False) -> None:
        self.cpus = cpus
        """CPUs the stage asked for; sets the thread pools when SLURM does not say."""
        self.finish = finish
        """Take the chain's last step (report, tracking) if this stage completes the chain."""

    def __call__(self, run_dir: str, stage: str, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
        limit_threads(self.cpus)
        export_rank_environment()
        result = run_stage(run_dir, stage, tuple(overrides))
        if self.finish and os.environ.get("RANK", "0") == "0":
            from jobs.track import finish_if_complete  # matplotlib and mlflow: only for the chain's end

            finish_if_complete(run_dir)
        return result

    def checkpoint(self, run_dir: str, stage: str, overrides: tuple[str, ...] = ()) -> submitit.helpers.DelayedSubmission:
        """Resubmit the same call; the stage resumes from its own files, so nothing is carried over.

        The training loop has already saved its last finished epoch; a half epoch is not saved
        on purpose (it would not replay identically), so nothing needs flushing here.
        """
        logging.getLogger(f"pipeline.{stage}").warning(
            "stage %s interrupted by the scheduler; requeueing, it resumes from %s",
            stage, active_checkpoint(run_dir, stage) or "its start",
        )
        again = StageJob(self.cpus, self.finish)
        return submitit.helpers.DelayedSubmission(again, run_dir, stage, tuple(overrides))


def export_rank_environment() -> int:
    """In a job of several tasks, export RANK, WORLD_SIZE, MASTER_ADDR, ... for torch, and this task's log
    (``PIPELINE_RANK_LOG``); returns the task count.

    CUDA_VISIBLE_DEVICES is left alone: every rank sees the node's GPUs and the runner pins rank
    ``LOCAL_RANK`` to its own, which keeps peer-to-peer copies between them possible.
    """
    try:
        env = submitit.JobEnvironment()
        tasks = env.num_tasks
    except (RuntimeError, KeyError):  # not inside a submitit job (a test, or pipeline.cli by hand)
        return 1
    if tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        os.environ[RANK_LOG_ENV] = str(env.paths.stderr)  # named by rank 0 if this rank is lost
    return tasks


def limit_threads(cpus: int | None) -> None:
    """Size BLAS/OpenMP pools to the job's CPUs before torch starts, unless the user set them.

    Without this, torch starts one thread per core of the node and jobs sharing a node slow each
    other down.
    """
    n = os.environ.get("SLURM_CPUS_PER_TASK") or (str(cpus) if cpus else None)
    if not n:
        return
    for var in _THREAD_VARS:
        os.environ.setdefault(var, n)
