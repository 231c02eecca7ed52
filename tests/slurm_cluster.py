"""Pytest plugin: a real single-node SLURM cluster on localhost.

Load it with ``pytest_plugins = ["tests.slurm_cluster"]`` in tests/conftest.py.
It provides the session-scoped fixture ``slurm_cluster``, which runs
``scripts/local-slurm.sh start`` (a no-op when the cluster is already up) and
yields a :class:`SlurmCluster` with small helpers to submit jobs and wait for
their accounting state.

Skips (outside CI only) when the cluster cannot be brought up here at all: not
root, or SLURM missing and no apt-get. With ``CI=true`` any failure to get a
working cluster fails the tests instead.

The cluster is left running after the session (the next ``start`` is then a
no-op, and concurrent pytest sessions on one machine do not pull it from under
each other); set ``LOCAL_SLURM_STOP_AFTER=1`` to stop it at the end of the
session when this session started it. ``scripts/local-slurm.sh stop`` stops it.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "local-slurm.sh"
START_TIMEOUT_S = 600
STOP_TIMEOUT_S = 120

# sacct states after which a job will not change any more (requeue aside).
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def in_ci() -> bool:
    return _truthy(os.environ.get("CI"))


def _state_dir() -> Path:
    return Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/local-slurm"))


def _script(command: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cluster_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return _script("status", timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def cannot_start_reason() -> str | None:
    """Why this machine cannot bring the cluster up at all, or None."""
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing"
    if shutil.which("bash") is None:
        return "bash is not available"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the local SLURM cluster needs root (scripts/local-slurm.sh start)"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available to install it"
    return None


@dataclass(frozen=True)
class SlurmCluster:
    """Handle on the running local cluster."""

    state_dir: Path
    mem_mode: str  # "cgroup" (OOM kill by the kernel) or "linuxproc" (OverMemoryKill)
    node: str
    partition: str = "debug"
    gpus: int = 2

    @property
    def oom_state(self) -> str:
        """sacct state of a job killed for exceeding --mem in this mode."""
        return "OUT_OF_MEMORY" if self.mem_mode == "cgroup" else "FAILED"

    @property
    def oom_step_state(self) -> str:
        """sacct state of an srun step (e.g. submitit's) killed for exceeding --mem.

        The allocation around it ends FAILED in both modes (srun exits non-zero).
        """
        return "OUT_OF_MEMORY" if self.mem_mode == "cgroup" else "CANCELLED"

    # -- commands -------------------------------------------------------------

    def cmd(self, *args: str, timeout: float = 30, check: bool = True) -> str:
        proc = subprocess.run(
            list(args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def sbatch(self, *args: str, script: str | Path | None = None, wrap: str | None = None) -> str:
        """Submit a job; returns its id. Pass either a script path or a --wrap command."""
        argv = ["sbatch", "--parsable", *args]
        if wrap is not None:
            argv += ["--wrap", wrap]
        if script is not None:
            argv.append(str(script))
        return self.cmd(*argv).strip().split(";")[0]

    def scancel(self, *job_ids: str) -> None:
        if job_ids:
            self.cmd("scancel", *job_ids, check=False)

    # -- states ---------------------------------------------------------------

    def job_state(self, job_id: str) -> str | None:
        """Allocation state from sacct ("CANCELLED by 0" -> "CANCELLED"); None if not recorded."""
        out = self.cmd("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State", check=False)
        lines = [line.split()[0] for line in out.splitlines() if line.strip()]
        return lines[-1] if lines else None

    def job_history(self, job_id: str) -> list[str]:
        """States of every record of the job, requeued runs included (sacct -D)."""
        out = self.cmd("sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State", check=False)
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def describe(self, job_id: str) -> str:
        parts = [
            self.cmd(
                "sacct", "-D", "-j", job_id,
                "-o", "JobID,State,ExitCode,Reason%30,Elapsed,MaxRSS,ReqMem",
                check=False,
            ),
            self.cmd("scontrol", "show", "job", job_id, check=False),
            self.cmd("sinfo", "-N", "-l", check=False),
        ]
        return "\n".join(p for p in parts if p)

    def wait_state(
        self, job_id: str, states: Iterable[str] = TERMINAL_STATES, timeout: float = 60
    ) -> str:
        """Poll sacct until the job's state is one of ``states``; returns it."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in wanted:
                return state
            time.sleep(0.5)
        raise AssertionError(
            f"job {job_id} not in {sorted(wanted)} after {timeout:.0f}s "
            f"(last state {state}):\n{self.describe(job_id)}"
        )


def _read_mem_mode(state_dir: Path) -> str:
    try:
        return (state_dir / "mem_mode").read_text().strip() or "linuxproc"
    except OSError:
        return "linuxproc"


def _node_name() -> str:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.split()
    return out[0] if out else os.uname().nodename.split(".")[0]


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster with accounting (see scripts/local-slurm.sh)."""
    started_here = False
    if not cluster_is_up():
        reason = cannot_start_reason()
        if reason is not None:
            if in_ci():
                pytest.fail(f"local SLURM cluster unavailable in CI: {reason}", pytrace=False)
            pytest.skip(reason)
        try:
            proc = _script("start", timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"scripts/local-slurm.sh start did not finish in {START_TIMEOUT_S}s\n"
                f"{exc.stdout or ''}{exc.stderr or ''}",
                pytrace=False,
            )
        if proc.returncode != 0:
            pytest.fail(
                f"scripts/local-slurm.sh start exited {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}",
                pytrace=False,
            )
        started_here = True
    state_dir = _state_dir()
    yield SlurmCluster(state_dir=state_dir, mem_mode=_read_mem_mode(state_dir), node=_node_name())
    if started_here and _truthy(os.environ.get("LOCAL_SLURM_STOP_AFTER")):
        try:
            _script("stop", timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
