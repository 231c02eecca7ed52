"""Multi-node training without a cluster: what the launch layer asks for, what dry-run refuses, the
rendezvous timeout key, the KG loader's epoch split, and what status says of a lost rank 0 without
accounting (tests/test_slurm_2node.py runs the real thing)."""
from __future__ import annotations

import pytest
import torch

from jobs.__main__ import main
from jobs.resources import executor_parameters
from jobs.slurm import TaskFailure, parse_scontrol, task_failures
from jobs.status import stage_rows
from pipeline.config import load_profile
from pipeline.kg.sampler import LinkBatchLoader
from pipeline.runs import RunDir, stage_fingerprint
from tests.kg_helpers import single_thread, small_graph  # noqa: F401  (autouse fixture)


def test_two_nodes_are_two_ranks_that_end_together():
    profile = load_profile("ci", ["resources.teacher.nodes=2"])
    params = executor_parameters(profile, "teacher")
    assert params["nodes"] == 2 and "tasks_per_node" not in params  # one rank per node
    assert params["slurm_srun_args"] == ["--kill-on-bad-exit=1"]
    assert "slurm_srun_args" not in executor_parameters(profile, "preprocess")


def test_dry_run_refuses_two_nodes_in_one_line_and_leaves_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["dry-run", "--profile", "ci", "--runs-root", str(runs), "-O", "resources.teacher.nodes=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: profile 'ci': stage teacher asks for 2 nodes, and the local executor runs on this machine "
                   "only; add -O resources.teacher.nodes=1 here (make submit runs it on 2 nodes)"]
    assert not runs.exists()


def test_the_collective_timeout_is_a_resource_and_reruns_nothing():
    before = load_profile("ci")
    after = load_profile("ci", ["resources.teacher.collective_timeout_s=30"])
    assert after.resources_for("teacher").collective_timeout_s == 30
    assert before.resources_for("teacher").collective_timeout_s is None  # pipeline.distributed's 600 s
    for stage in before.stages:
        assert stage_fingerprint(before, stage, {}) == stage_fingerprint(after, stage, {})


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return small_graph(tmp_path_factory.mktemp("kg"), scale=0.001, val_fraction=0.05, test_fraction=0.1)


def _signature(batch) -> list[list[int]]:
    return [torch.cat([batch.n_id[t] for t in sorted(batch.n_id)]).tolist()] + [
        torch.cat([t.pos.flatten(), t.neg.flatten()]).tolist() for t in batch.targets]


@pytest.mark.parametrize("world", [2, 3])
def test_kg_ranks_build_exactly_the_steps_one_process_builds(graph, world):
    whole = LinkBatchLoader(graph, seed_edges=48, fanouts=[3, 2], seed=5, sampler="torch")
    ranks = [LinkBatchLoader(graph, seed_edges=48, fanouts=[3, 2], seed=5, sampler="torch") for _ in range(world)]
    for r, loader in enumerate(ranks):
        loader.shard(r, world)
    for epoch in (1, 2):
        for loader in (whole, *ranks):
            loader.set_epoch(epoch)
        every = [_signature(b) for b in whole]
        assert len({len(loader) for loader in ranks}) == 1 and len(ranks[0]) == -(-len(every) // world)
        steps = [list(loader) for loader in ranks]
        weights = [loader.batch_weights() for loader in ranks]
        interleaved = [(b, w[k]) for k in range(len(ranks[0])) for b, w in zip((s[k] for s in steps), weights)]
        assert [_signature(b) for b, w in interleaved if w] == every  # step k of W ranks = steps kW..kW+W-1
        assert sum(1 for _, w in interleaved if not w) == len(interleaved) - len(every)
    with pytest.raises(ValueError, match="rank 3 is not in a world of 3"):
        whole.shard(3, 3)


# -- status of a job whose rank 0 was killed, on a cluster without accounting --------------------------

def test_scontrol_stands_in_for_sacct_with_states_and_run_times_of_jobs_and_array_tasks():
    jobs = parse_scontrol("JobId=7 JobName=ci-teacher JobState=FAILED Reason=NonZeroExitCode RunTime=00:00:14\n"
                          "JobId=9 ArrayJobId=8 ArrayTaskId=1 JobState=COMPLETED RunTime=00:01:02\n"
                          "JobId=8 ArrayJobId=8 ArrayTaskId=2-3%2 JobState=PENDING RunTime=00:00:00\n")
    assert {k: (j.state, j.elapsed_s) for k, j in jobs.items()} == {
        "7": ("FAILED", 14.0), "8_1": ("COMPLETED", 62.0), "8_2": ("PENDING", 0.0), "8_3": ("PENDING", 0.0)}


def test_status_names_the_first_rank_srun_saw_die_its_node_and_its_log(tmp_path):
    run = RunDir.create(load_profile("ci", ["resources.teacher.nodes=2"]), root=tmp_path, run_id="r")
    run.write_status("teacher", state="running", started=100.0, ended=None, pid=1, error=None)  # rank 0 never said
    stderr = tmp_path / "logs" / "7" / "7_0_log.err"
    stderr.parent.mkdir(parents=True)
    # srun's lines, the first one after a progress bar's carriage return
    stderr.write_text("epoch 2/40:   0%|          | 0/60 [00:00<?, ?it/s]srun: error: n1: task 0: Killed\n"
                      "srun: launch/slurm: _step_signal: Terminating StepId=7.0\n"
                      "srun: error: n2: task 1: Exited with exit code 1\n")
    assert task_failures(stderr.read_text()) == [TaskFailure("n1", 0, "Killed"),
                                                 TaskFailure("n2", 1, "Exited with exit code 1")]
    records = {"teacher": {"job_id": "7", "executor": "slurm", "stderr": str(stderr)}}
    (row,) = stage_rows(run, ["teacher"], {}, records, parse_scontrol("JobId=7 JobState=FAILED RunTime=00:00:14"))
    assert (row.state, row.elapsed_s) == ("failed", 14.0)
    assert row.detail == f"rank 0 on node n1: Killed (srun); its log: {stderr.parent / '7_0_log.err'}"
