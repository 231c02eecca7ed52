"""Pytest plugin: a real two-node SLURM cluster (nodes n1 and n2) on this machine.

Load it with ``pytest_plugins = ["tests.slurm2_cluster"]``. The session fixture ``slurm2_cluster``
runs ``scripts/local-slurm-2node.sh start`` (a no-op when it is up) and yields a
:class:`TwoNodeCluster`; the function fixture ``on_two_nodes`` also points every SLURM command of
the test (sbatch through submitit, scancel, ...) at that cluster by setting ``SLURM_CONF``.

This cluster is separate from the single-node one of ``tests.slurm_cluster`` (own cluster name,
ports, munged and configuration) and has no accounting: job states come from ``scontrol show job``,
which keeps a finished job for the cluster's MinJobAge (15 minutes), never from sacct.

Skips (outside CI only) when it cannot be brought up here: not root, or SLURM not installed. With
``CI=true`` that fails the tests instead. Left running after the session, like the single-node
cluster; ``LOCAL_SLURM_STOP_AFTER=1`` stops it when this session started it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pytest

from tests.slurm_cluster import TERMINAL_STATES, _truthy, in_ci

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "local-slurm-2node.sh"
START_TIMEOUT_S = 120


def state_dir() -> Path:
    return Path(os.environ.get("LOCAL_SLURM2_DIR", "/tmp/local-slurm-2node"))


def _script(command: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


def cannot_start_reason() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the two-node SLURM cluster needs root (scripts/local-slurm-2node.sh start)"
    missing = [b for b in ("slurmctld", "slurmd", "munged", "unshare") if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/local-slurm.sh start installs SLURM and munge)"
    return None


@dataclass(frozen=True)
class TwoNodeCluster:
    """Handle on the running two-node cluster; every command is run with its SLURM_CONF."""

    state_dir: Path
    generation: str
    """Changes with every start (job ids restart at 1): a submitit folder must not outlive it."""
    start_s: float | None
    """How long this session's start took; None when it was already up."""
    own_hostnames: bool = True
    """Each node has its own host name (a UTS namespace); False where unshare is not permitted (a
    container without CAP_SYS_ADMIN): then only SLURMD_NODENAME tells the nodes apart."""
    nodes: tuple[str, ...] = ("n1", "n2")

    @property
    def conf(self) -> Path:
        return self.state_dir / "etc" / "slurm.conf"

    def cmd(self, *args: str, timeout: float = 30, check: bool = True) -> str:
        proc = subprocess.run(list(args), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              check=False, env={**os.environ, "SLURM_CONF": str(self.conf)})
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as key -> value ({} once the job has left the controller)."""
        out = self.cmd("scontrol", "show", "job", "-o", str(job_id), check=False)
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def job_state(self, job_id: str) -> str | None:
        return self.job(job_id).get("JobState")

    def restarts(self, job_id: str) -> int:
        """How often the job was requeued (scontrol's Restarts)."""
        return int(self.job(job_id).get("Restarts", "0"))

    def describe(self, job_id: str) -> str:
        return "\n".join([self.cmd("scontrol", "show", "job", str(job_id), check=False),
                          self.cmd("sinfo", "-N", "-l", check=False)])

    def wait_state(self, job_id: str, states: Iterable[str] = TERMINAL_STATES, timeout: float = 60) -> str:
        wanted, state = set(states), None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in wanted:
                return state
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not in {sorted(wanted)} after {timeout:.0f}s (last state {state}):\n"
                             f"{self.describe(job_id)}")

    def scancel(self, *job_ids: str) -> None:
        if job_ids:
            self.cmd("scancel", *job_ids, check=False)

    def task_pid(self, job_id: str, rank: int) -> int | None:
        """The process of task ``rank`` of the job's srun step, found by its environment (same machine)."""
        want = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={rank}".encode(), b"SLURM_STEP_ID=0",
                f"SLURM_CONF={self.conf}".encode()}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if b"submitit" not in (proc / "cmdline").read_bytes():
                    continue
                env = set((proc / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if want <= env:
                return int(proc.name)
        return None


def _state_file(state: Path, name: str) -> str:
    try:
        return (state / name).read_text().strip()
    except OSError:
        return ""


@pytest.fixture(scope="session")
def slurm2_cluster():
    """The two-node cluster of scripts/local-slurm-2node.sh, started if it is not up."""
    state = state_dir()
    up = _script("status", timeout=60).returncode == 0 if SCRIPT.is_file() else False
    started, start_s = False, None
    if not up:
        reason = cannot_start_reason()
        if reason is not None:
            if in_ci():
                pytest.fail(f"two-node SLURM cluster unavailable in CI: {reason}", pytrace=False)
            pytest.skip(reason)
        t0 = time.monotonic()
        proc = _script("start")
        start_s = time.monotonic() - t0
        if proc.returncode != 0:
            pytest.fail(f"scripts/local-slurm-2node.sh start exited {proc.returncode}:\n{proc.stdout}{proc.stderr}",
                        pytrace=False)
        started = True
    yield TwoNodeCluster(state_dir=state, generation=_state_file(state, "generation"), start_s=start_s,
                         own_hostnames=_state_file(state, "hostnames") != "shared")
    if started and _truthy(os.environ.get("LOCAL_SLURM_STOP_AFTER")):
        _script("stop")


@pytest.fixture
def on_two_nodes(slurm2_cluster, monkeypatch) -> TwoNodeCluster:
    """The cluster, with SLURM_CONF pointing this test's SLURM commands (and its jobs) at it."""
    monkeypatch.setenv("SLURM_CONF", str(slurm2_cluster.conf))
    return slurm2_cluster
