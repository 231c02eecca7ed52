"""Helpers for the launch-layer tests: reading `python -m jobs status` output, waiting on a run's
jobs in the real cluster with a deadline, and a graph cache of the CI profile built once per session."""
from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pytest

from jobs.__main__ import main
from jobs.records import latest_records
from jobs.status import status_report
from pipeline.runs import RunDir

CHAIN = ["preprocess", "teacher", "evaluate"]
METRIC_KEYS = ("graphs", "attacks", "accuracy", "precision", "recall", "f1", "balanced_accuracy", "confusion")
"""evaluate/metrics.json keys that are results; latency columns measure the machine, not the model."""


def table_lines(lines: list[str]) -> list[str]:
    """The stage rows of one run's status: after the run line and the header, up to the first blank line."""
    return list(itertools.takewhile(lambda line: line.strip(), lines[2:]))


def stage_states(run: RunDir) -> dict[str, str]:
    """stage -> state, as `python -m jobs status` prints it (through sacct for SLURM runs)."""
    return {line.split()[0]: line.split()[1] for line in table_lines(status_report(run.path).splitlines())}


def only_run(root: Path, profile: str = "ci") -> RunDir:
    (path,) = (root / profile).iterdir()
    return RunDir(path)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, describe: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{describe()}")


SETTLED = {"done", "failed", "cancelled", "out_of_memory", "interrupted", "stale"}


def wait_settled(run: RunDir, stages: Iterable[str], timeout: float = 300) -> dict[str, str]:
    """Poll status (sacct and the run's files) until every stage in ``stages`` stops changing state."""
    wanted = list(stages)
    states: dict[str, str] = {}

    def settled() -> bool:
        nonlocal states
        states = stage_states(run)
        return all(states.get(s) in SETTLED for s in wanted)

    wait_for(settled, timeout, f"stages {wanted} of {run.path} to finish", lambda: status_report(run.path))
    return states


def job_ids(run: RunDir) -> dict[str, str]:
    return {stage: record["job_id"] for stage, record in latest_records(run).items()}


def all_job_ids(*runs: RunDir) -> list[str]:
    """Every job these runs ever submitted (jobs.json history), resumes included."""
    return [record["job_id"] for run in runs for record in (run.read_jobs() or {}).get("history", [])]


@contextlib.contextmanager
def cancel_on_failure(cluster, runs: Callable[[], list[RunDir]]) -> Iterator[None]:
    """If the test fails, scancel the jobs its runs submitted (and nothing else) so none lingers in
    the shared queue; a passing test has waited for all of them already."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            cluster.scancel(*all_job_ids(*runs()))
        raise


def wait_jobs_ended(cluster, runs: list[RunDir], timeout: float = 60) -> dict[str, str]:
    """job id -> final sacct state of every job of ``runs`` (stages write done.json just before exit)."""
    return {job: cluster.wait_state(job, timeout=timeout) for job in dict.fromkeys(all_job_ids(*runs))}


def results(run: RunDir) -> list[dict]:
    """evaluate/metrics.json rows without the timing columns."""
    rows = json.loads((run.path / "evaluate" / "metrics.json").read_text())["rows"]
    return [{k: row[k] for k in ("model", "split", *METRIC_KEYS) if k in row} for row in rows]


def run_cli(*args: str) -> None:
    rc = main(list(args))
    assert rc == 0, f"python -m jobs {' '.join(args)} exited {rc}"


def copy_cache(source: Path, target: Path) -> Path:
    """A private copy of a built graph cache folder (for tests that damage it)."""
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="session")
def ci_cache(tmp_path_factory) -> Path:
    """data.cache_dir with the CI profile's graph cache built once, so every chain's preprocess is a no-op."""
    import logging

    from pipeline.can.data.build import preprocess
    from pipeline.config import load_profile

    root = tmp_path_factory.mktemp("ci-cache")
    profile = load_profile("ci", [f"data.cache_dir={root}"])
    preprocess(profile, logging.getLogger("tests.ci_cache"))
    return root
