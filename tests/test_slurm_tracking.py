"""`make submit PROFILE=ci` on the real local cluster ends with the chain's last step, taken by the
stage job that completes the chain: report.html in the run and the run in the runs root's MLflow
store, each stage tagged with the SLURM job that ran it and the commit that launched it."""
from __future__ import annotations

import pytest

from pipeline.tracking.store import client_for, store_for
from tests.launch_helpers import (
    CHAIN,
    cancel_on_failure,
    job_ids,
    only_run,
    run_cli,
    wait_jobs_ended,
    wait_settled,
)

pytest_plugins = ["tests.slurm_cluster"]
pytestmark = pytest.mark.slurm


def test_a_submitted_chain_ends_with_its_report_and_its_import(slurm_cluster, ci_cache, tmp_path):
    runs = tmp_path / "runs"
    run_cli("submit", "--profile", "ci", "--runs-root", str(runs), "-O", f"data.cache_dir={ci_cache}")
    run = only_run(runs)
    with cancel_on_failure(slurm_cluster, lambda: [run]):
        assert wait_settled(run, CHAIN, timeout=300) == dict.fromkeys(CHAIN, "done")
        # the last step runs in the evaluate job after its stage: the job ends once it is taken
        assert set(wait_jobs_ended(slurm_cluster, [run], timeout=120).values()) == {"COMPLETED"}
    assert (run.path / "report.html").stat().st_size > 10_000
    ids = job_ids(run)
    last = (run.path / "logs" / ids["evaluate"] / f"{ids['evaluate']}_0_log.out").read_text()
    assert f"report: {run.path / 'report.html'}" in last and "tracked: 4 MLflow runs" in last

    store = store_for(None, runs)
    client = client_for(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "can"]
    tracked = client.search_runs([experiment.experiment_id])
    stages = {r.data.tags["gnn.stage"]: r.data.tags for r in tracked if r.data.tags["gnn.kind"] == "stage"}
    assert {s: tags["gnn.job_id"] for s, tags in stages.items()} == ids
    commits = {rec["git_commit"] for rec in run.read_jobs()["stages"].values()}
    assert {tags["gnn.git_commit"] for tags in stages.values()} == commits and "" not in commits
    (chain,) = [r for r in tracked if r.data.tags["gnn.kind"] == "chain"]
    assert chain.info.status == "FINISHED" and [a.path for a in client.list_artifacts(chain.info.run_id)] == [
        "profile.yaml", "report.html"]
