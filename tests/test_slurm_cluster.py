"""Integration checks of the local SLURM cluster (scripts/local-slurm.sh).

These run real jobs through slurmctld/slurmd and read their outcome back from
accounting (sacct), the way the launch layer (submitit) does.
"""

from __future__ import annotations

import operator
import os
import re
import sys
import time
from pathlib import Path

import pytest

# Also loaded from tests/conftest.py; naming it here keeps this file runnable on its own.
pytest_plugins = ["tests.slurm_cluster"]

pytestmark = pytest.mark.slurm


def _wait_for(predicate, timeout: float, what: str, describe=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{describe()}")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_trivial_job_completes(slurm_cluster, tmp_path):
    out = tmp_path / "hello.out"
    job = slurm_cluster.sbatch(
        "--job-name=hello", "--time=2", f"--output={out}", wrap="echo hello from $SLURM_JOB_ID"
    )
    assert slurm_cluster.wait_state(job, timeout=60) == "COMPLETED", slurm_cluster.describe(job)
    assert _lines(out) == [f"hello from {job}"]


def test_afterok_dependency_on_failed_parent_never_runs(slurm_cluster, tmp_path):
    marker = tmp_path / "child-ran"
    # Hold the parent until the child is queued, so the dependency is always registered first.
    parent = slurm_cluster.sbatch(
        "--hold", "--time=2", f"--output={tmp_path / 'parent.out'}", wrap="exit 3"
    )
    child = slurm_cluster.sbatch(
        f"--dependency=afterok:{parent}",
        "--kill-on-invalid-dep=yes",
        "--time=2",
        f"--output={tmp_path / 'child.out'}",
        wrap=f"touch {marker}",
    )
    try:
        slurm_cluster.cmd("scontrol", "release", parent)
        assert slurm_cluster.wait_state(parent, timeout=60) == "FAILED"
        assert slurm_cluster.wait_state(child, timeout=60) == "CANCELLED", slurm_cluster.describe(
            child
        )
    finally:
        slurm_cluster.scancel(parent, child)
    assert not marker.exists(), "the dependent job ran although its parent failed"
    assert not (tmp_path / "child.out").exists(), "the dependent job was started"


def test_job_over_mem_is_killed(slurm_cluster, tmp_path):
    out = tmp_path / "oom.out"
    # Touches 600 MB (bytes of b"x", not calloc'd zeros) against a 100 MB limit.
    hog = "import time; x = b'x' * (600 << 20); time.sleep(60); print('survived')"
    job = slurm_cluster.sbatch(
        "--mem=100M", "--time=2", f"--output={out}", wrap=f'{sys.executable} -c "{hog}"'
    )
    started = time.monotonic()
    state = slurm_cluster.wait_state(job, timeout=60)
    elapsed = time.monotonic() - started
    assert state == slurm_cluster.oom_state, (
        f"mode {slurm_cluster.mem_mode}: expected {slurm_cluster.oom_state}, got {state}\n"
        + slurm_cluster.describe(job)
    )
    assert elapsed < 45, "the job was not killed before its sleep ended"
    assert "survived" not in out.read_text()


def test_requeue_of_running_job_runs_it_again(slurm_cluster, tmp_path):
    runs = tmp_path / "runs.txt"
    script = tmp_path / "requeue.sh"
    script.write_text(
        "#!/bin/bash\n"
        f'echo "run ${{SLURM_RESTART_COUNT:-0}}" >> {runs}\n'
        "sleep 300\n"
    )
    job = slurm_cluster.sbatch(
        "--requeue", "--time=10", f"--output={tmp_path / 'requeue.out'}", script=script
    )
    try:
        _wait_for(lambda: len(_lines(runs)) >= 1, 60, "the first run",
                  lambda: slurm_cluster.describe(job))
        slurm_cluster.wait_state(job, {"RUNNING"}, timeout=30)
        slurm_cluster.cmd("scontrol", "requeue", job)
        _wait_for(lambda: len(_lines(runs)) >= 2, 60, "the requeued run",
                  lambda: slurm_cluster.describe(job))
        assert _lines(runs) == ["run 0", "run 1"]
        assert slurm_cluster.wait_state(job, {"RUNNING"}, timeout=30) == "RUNNING"
        assert "REQUEUED" in slurm_cluster.job_history(job)
    finally:
        slurm_cluster.scancel(job)
    assert slurm_cluster.wait_state(job, timeout=30) == "CANCELLED"


@pytest.mark.parametrize("request_flag", ["--gres=gpu:1", "--gpus-per-node=2"])
def test_gpu_request_is_scheduled(slurm_cluster, tmp_path, request_flag):
    out = tmp_path / "gpu.out"
    job = slurm_cluster.sbatch(
        request_flag, "--time=2", f"--output={out}",
        wrap="echo gpus=$SLURM_JOB_GPUS cvd=$CUDA_VISIBLE_DEVICES",
    )
    assert slurm_cluster.wait_state(job, timeout=60) == "COMPLETED", slurm_cluster.describe(job)
    expected = "0" if request_flag.endswith(":1") else "0,1"
    assert _lines(out) == [f"gpus={expected} cvd={expected}"]
    alloc = slurm_cluster.cmd("sacct", "-n", "-X", "-P", "-j", job, "-o", "AllocTRES")
    assert "gres/gpu=" in alloc


def _submitit_executor(tmp_path, **params):
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(timeout_min=5, cpus_per_task=1, **params)
    return submitit, executor


def _wait_submitit(job, states, timeout: float) -> str:
    """Wait until submitit reports the job done and its (sacct) state is one of ``states``."""

    def stderr() -> str:
        return job.paths.stderr.read_text() if job.paths.stderr.exists() else ""

    # force_check: query sacct now instead of at submitit's own (slow) polling pace.
    _wait_for(lambda: job.done(force_check=True), timeout, f"submitit job {job.job_id} to finish",
              stderr)
    def state() -> str:
        job.get_info(mode="force")  # refresh from sacct
        return job.state

    # The result file can appear a moment before accounting has the final state.
    _wait_for(lambda: state() in states, 30, f"submitit job {job.job_id} in {states}",
              lambda: f"state {job.state}\n{stderr()}")
    return job.state


def test_submitit_job_with_gpu_returns_result(slurm_cluster, tmp_path):
    _, executor = _submitit_executor(tmp_path, mem_gb=1, gpus_per_node=1)
    job = executor.submit(os.getenv, "CUDA_VISIBLE_DEVICES")
    _wait_submitit(job, {"COMPLETED"}, 90)
    assert job.result() == "0"


def test_submitit_sees_job_killed_for_memory(slurm_cluster, tmp_path):
    submitit, executor = _submitit_executor(tmp_path, mem_gb=0.1)
    job = executor.submit(operator.mul, b"x", 600 << 20)
    # submitit runs the function in an srun step: the step is killed for memory,
    # srun then exits non-zero, so the allocation itself ends FAILED.
    assert _wait_submitit(job, {"FAILED", "OUT_OF_MEMORY"}, 90) == "FAILED"
    step = slurm_cluster.cmd("sacct", "-n", "-P", "-j", f"{job.job_id}.0", "-o", "State").split()
    assert step and step[0] == slurm_cluster.oom_step_state, slurm_cluster.describe(job.job_id)
    assert re.search(r"oom-kill|out of memory|exceeded memory limit", job.stderr() or "", re.I)
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()
