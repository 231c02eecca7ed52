"""Data-parallel training across two nodes of a real SLURM cluster (scripts/local-slurm-2node.sh:
nodes n1 and n2, one machine, loopback only, a UTS namespace per node).

A stage with ``resources.<stage>.nodes: 2`` runs as one rank on each node (gloo), rendezvous at the
first node by name. What is proven here, through ``python -m jobs submit`` as a user runs it:

- the CAN teacher and the KG teacher end with the weights of one process with ``grad_accum = 2``;
- ``scancel --signal=USR2`` and ``scontrol requeue`` mid-training resume both nodes from the last
  checkpoint, every epoch once in metrics.jsonl;
- a rank that is lost fails the job within a bounded time (a frozen one: the collective timeout from
  the profile; a killed one: srun ends the others), and ``status`` names its node and its log;
- rank 0 alone writes the stage's files; each rank plans memory for its own node.

The cluster has no accounting, so states come from the stages' files and ``scontrol`` (for the tests
and for ``status``), never from sacct.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import submitit
import torch

from jobs.stage_job import export_rank_environment
from jobs.status import status_report
from pipeline.config import load_profile
from pipeline.runner import run_stage
from pipeline.runs import RunDir
from tests.launch_helpers import job_ids, only_run, run_cli, wait_for, wait_settled

pytest_plugins = ["tests.slurm2_cluster"]
pytestmark = pytest.mark.slurm2

CAN = ["stages=[preprocess,teacher]", "model.dropout=0.0", "resources.teacher.nodes=2"]
KG = ["stages=[preprocess,teacher]", "device=cpu", "train.threads=1", "train.epochs=2", "kg.max_seed_edges=128",
      "kg.fanouts=[4,2]", "kg.val_edges_per_type=50", "kg.eval_negatives=20", "kg_model.teacher.hidden=16",
      "kg_model.teacher.out=16", "kg_model.teacher.heads=2", "kg_model.teacher.dropout=0.0",
      "resources.default={mem_gb: 2, gpus: 0, cpus: 1, time_min: 10}",
      "resources.preprocess={mem_gb: 2, gpus: 0, cpus: 1, time_min: 10}",
      "resources.teacher={mem_gb: 2, gpus: 0, cpus: 1, time_min: 10}"]
STAGE_FILES = {"best.pt", "checkpoint.pt", "done.json", "log", "memory_plan.json", "metrics.jsonl", "status.json"}
"""What a finished teacher's folder holds (written by rank 0 alone)."""


def _args(root: Path, profile: str, overrides: list[str]) -> list[str]:
    return ["--profile", profile, "--runs-root", str(root), *(a for o in overrides for a in ("-O", o))]


def _in_process(root: Path, profile: str, overrides: list[str]) -> dict[str, torch.Tensor]:
    """Reference: the same chain in this process, one rank, no launcher; the teacher's best weights."""
    prof = load_profile(profile, overrides)
    run = RunDir.create(prof, root=root, run_id="one")
    for stage in prof.stages:
        run_stage(run.path, stage)
    return torch.load(run.path / "teacher" / "best.pt", weights_only=True)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _finished_on_two_nodes(cluster, root: Path, profile: str) -> RunDir:
    run = only_run(root, profile)
    try:
        assert wait_settled(run, ["preprocess", "teacher"], timeout=300) == dict.fromkeys(["preprocess", "teacher"],
                                                                                          "done")
        teacher = job_ids(run)["teacher"]
        assert cluster.wait_state(teacher, timeout=60) == "COMPLETED"
    except BaseException:
        cluster.scancel(*job_ids(run).values())
        raise
    return run


def _check_two_node_run(cluster, run: RunDir, reference: dict, mem_gb: float) -> None:
    """Same weights as the reference, one rank per node, rank 0's files only, each rank planned for its node."""
    best = torch.load(run.path / "teacher" / "best.pt", weights_only=True)
    assert _max_diff(best["state_dict"], reference["state_dict"]) < 1e-5
    assert best["metrics"] == pytest.approx(reference["metrics"], abs=1e-5)
    job = job_ids(run)["teacher"]
    job_dir = run.path / "logs" / job
    script = (job_dir / f"{job}_submission.sh").read_text()
    assert "#SBATCH --nodes=2\n" in script and "--kill-on-bad-exit=1" in script
    assert sorted(p.name for p in job_dir.glob("*_result.pkl")) == [f"{job}_0_result.pkl", f"{job}_1_result.pkl"]
    log = (run.path / "teacher" / "log").read_text()
    assert re.search(r"data-parallel: rank 0 of 2 \(gloo, master n1:\d+", log), log
    assert "data-parallel: rank 1 of 2" in (job_dir / f"{job}_1_log.err").read_text()
    assert STAGE_FILES <= {p.name for p in (run.path / "teacher").iterdir()}
    assert run.read_status("teacher")["host"] == ("n1" if cluster.own_hostnames else socket.gethostname())
    lines = [json.loads(line) for line in (run.path / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, run.profile().train.epochs + 1))
    assert all(r["ranks"] == 2 for r in lines)
    # one rank on each node: each plans for its node's whole --mem (the cgroup of its node, or SLURM's)
    budget = json.loads((run.path / "teacher" / "memory_plan.json").read_text())["budget"]
    assert budget["total"] == int(mem_gb * 2**30) and "ranks on this node" not in budget["total_source"]
    assert "slurm_n2" not in budget["total_source"]  # rank 0's plan, made on n1


def _ranks(_: int) -> tuple[str, str, str, str, str]:
    export_rank_environment()
    return (os.environ["SLURMD_NODENAME"], socket.gethostname(), os.environ["RANK"], os.environ["MASTER_ADDR"],
            os.environ["LOCAL_WORLD_SIZE"])


def test_two_nodes_run_one_rank_each_under_their_own_hostnames(on_two_nodes, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / on_two_nodes.generation / "%j", cluster="slurm")
    executor.update_parameters(nodes=2, tasks_per_node=1, mem_gb=0.5, timeout_min=5)
    job = executor.submit(_ranks, 0)
    # submitit learns of a job that died without a result only from sacct, which this cluster lacks
    assert on_two_nodes.wait_state(job.job_id, timeout=120) == "COMPLETED", on_two_nodes.describe(job.job_id)
    ranks = job.results()
    assert [(node, rank, master, local) for node, _, rank, master, local in ranks] == [
        ("n1", "0", "n1", "1"), ("n2", "1", "n1", "1")]
    if on_two_nodes.own_hostnames:
        assert [host for _, host, *_ in ranks] == ["n1", "n2"]


@pytest.fixture(scope="module")
def can_reference(ci_cache, tmp_path_factory) -> dict:
    return _in_process(tmp_path_factory.mktemp("can-ref"), "ci",
                       [f"data.cache_dir={ci_cache}", *CAN, "resources.teacher.nodes=1", "train.grad_accum=2"])


def test_can_teacher_on_two_nodes_matches_one_process_with_grad_accum_2(on_two_nodes, ci_cache, can_reference,
                                                                         tmp_path):
    run_cli("submit", *_args(tmp_path / "runs", "ci", [f"data.cache_dir={ci_cache}", *CAN]))
    run = _finished_on_two_nodes(on_two_nodes, tmp_path / "runs", "ci")
    _check_two_node_run(on_two_nodes, run, can_reference, mem_gb=2)


@pytest.fixture(scope="module")
def kg_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kg-cache")


def test_kg_teacher_on_two_nodes_matches_one_process_with_grad_accum_2(on_two_nodes, kg_cache, tmp_path):
    overrides = [f"data.cache_dir={kg_cache}", *KG]
    reference = _in_process(tmp_path / "ref", "primekg", [*overrides, "train.grad_accum=2"])
    run_cli("submit", *_args(tmp_path / "runs", "primekg", [*overrides, "resources.teacher.nodes=2"]))
    run = _finished_on_two_nodes(on_two_nodes, tmp_path / "runs", "primekg")
    _check_two_node_run(on_two_nodes, run, reference, mem_gb=2)


# -- interruptions ----------------------------------------------------------------------------------------

EPOCHS = 40
LONG = ["stages=[preprocess,teacher]", "resources.teacher.nodes=2", f"train.epochs={EPOCHS}",
        f"train.patience={EPOCHS}", "train.batch_size=4"]
"""Small batches make an epoch last a second or two on two ranks: long enough to interrupt."""


def _epochs(run: RunDir) -> list[int]:
    path = run.path / "teacher" / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


def _submit_long(cluster, root: Path, ci_cache: Path, extra: list[str] = ()) -> tuple[RunDir, str]:
    run_cli("submit", *_args(root, "ci", [f"data.cache_dir={ci_cache}", *LONG, *extra]))
    run = only_run(root)
    job = job_ids(run)["teacher"]
    wait_for(lambda: len(_epochs(run)) >= 1, 180, "a finished epoch on two nodes", lambda: cluster.describe(job))
    return run, job


def test_preempted_two_node_job_resumes_on_both_nodes_with_every_epoch_once(on_two_nodes, ci_cache, tmp_path):
    run, job = _submit_long(on_two_nodes, tmp_path / "runs", ci_cache)
    try:
        on_two_nodes.cmd("scancel", "--signal=USR2", job)  # reaches both ranks; rank 0 checkpoints and requeues
        at_signal = len(_epochs(run))
        wait_for(lambda: on_two_nodes.restarts(job) >= 1 and len(_epochs(run)) >= at_signal + 1, 180,
                 "the requeued job's epochs", lambda: on_two_nodes.describe(job))
        assert len(_epochs(run)) < EPOCHS, "training finished before the second interruption; raise EPOCHS"
        on_two_nodes.cmd("scontrol", "requeue", job)  # no warning: both nodes' tasks are killed mid-epoch
        assert wait_settled(run, ["preprocess", "teacher"], timeout=300)["teacher"] == "done"
        assert on_two_nodes.wait_state(job, timeout=60) == "COMPLETED"
    except BaseException:
        on_two_nodes.scancel(job)
        raise
    assert on_two_nodes.restarts(job) == 2
    assert _epochs(run) == list(range(1, EPOCHS + 1))
    log = (run.path / "teacher" / "log").read_text()
    assert "interrupted by the scheduler; requeueing" in log
    rank0 = [int(k) for k in re.findall(r"resuming from \S+checkpoint\.pt after epoch (\d+)", log)]
    rank1_log = (run.path / "logs" / job / f"{job}_1_log.err").read_text()
    rank1 = [int(k) for k in re.findall(r"\[rank 1\] INFO resuming from \S+checkpoint\.pt after epoch (\d+)",
                                        rank1_log)]
    assert len(rank0) == 2 and rank1 == rank0, (rank0, rank1)  # both nodes resumed, from the same epochs
    saved = torch.load(run.path / "teacher" / "checkpoint.pt", weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rng_by_rank"]) == 2
    assert json.loads((run.path / "teacher" / "done.json").read_text())["epochs_run"] == EPOCHS


TIMEOUT_S = 20
"""Long enough that ranks planning their memory at different speeds on a loaded machine do not time out."""


@pytest.mark.parametrize("how, rank, node", [(signal.SIGSTOP, 1, "n2"), (signal.SIGKILL, 0, "n1")],
                         ids=["rank-1-frozen", "rank-0-killed"])
def test_a_lost_rank_fails_the_job_in_bounded_time_and_status_names_its_node_and_log(on_two_nodes, ci_cache,
                                                                                    tmp_path, how, rank, node):
    run, job = _submit_long(on_two_nodes, tmp_path / "runs", ci_cache,
                            [f"resources.teacher.collective_timeout_s={TIMEOUT_S}", "resources.teacher.time_min=30"])
    pid = on_two_nodes.task_pid(job, rank)
    assert pid is not None, on_two_nodes.describe(job)
    try:
        os.kill(pid, how)
        lost = time.monotonic()
        # frozen: rank 0 waits out the collective timeout, then watches the heartbeats for 2.5 s;
        # killed: srun ends the other rank at once (--kill-on-bad-exit)
        assert on_two_nodes.wait_state(job, timeout=TIMEOUT_S + 40) == "FAILED"
        took = time.monotonic() - lost
    finally:
        on_two_nodes.scancel(job)
        _release(on_two_nodes, job, rank, pid)
    assert took < TIMEOUT_S + 40
    report = status_report(run.path)
    rank_log = run.path / "logs" / job / f"{job}_{rank}_log.err"
    if rank == 1:  # rank 0 names it (RankLost)
        assert re.search(rf"stage teacher failed: RankLost: .*rank 1 \(node n2, pid {pid}; its log: "
                         + re.escape(str(rank_log)) + r"\) stopped answering", report), report
        assert f"resources.teacher.collective_timeout_s={TIMEOUT_S}" in report
        assert f"  log: {run.path / 'teacher' / 'log'}" in report
    else:  # rank 0 itself is gone: srun's account, through scontrol (no accounting here)
        assert f"stage teacher failed: rank 0 on node {node}: Killed (srun); its log: {rank_log}" in report, report
        assert "job states come from scontrol" in report


def _release(cluster, job: str, rank: int, pid: int) -> None:
    """A frozen rank that SLURM has not reaped (a failed test) must not stay stopped on the machine."""
    if cluster.task_pid(job, rank) == pid:  # still that task, not a reused pid
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
