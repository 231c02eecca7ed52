"""Data-parallel training: the epoch split across ranks, and 2 CPU ranks (gloo) against 1 rank.

W ranks with ``grad_accum = 1`` take the optimizer steps that 1 process with ``grad_accum = W``
takes (each step averages the gradients of the same W consecutive batches), so with dropout off
their weights agree to float rounding. Against a plain 1-rank run (twice the steps of half the
batch) only the outcome is comparable: validation metrics within a tolerance.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import pytest
import submitit
import torch

from jobs.stage_job import export_rank_environment
from pipeline import distributed
from pipeline.can.data.cache import GraphSplit
from pipeline.can.data.loader import GraphLoader
from pipeline.config import load_profile
from pipeline.distributed import shard_positions
from pipeline.runner import run_stage
from pipeline.runs import RunDir
from tests.helpers import tiny_profile, write_synthetic_cache
from tests.launch_helpers import cancel_on_failure, job_ids, only_run, run_cli, wait_jobs_ended, wait_settled

pytest_plugins = ["tests.slurm_cluster"]

TOLERANCE = {"f1": 0.05, "accuracy": 0.05, "loss": 0.1}
"""How far 2 ranks may land from a plain 1-rank run (a different step count and batch size)."""


# -- the split --------------------------------------------------------------------------------------

@pytest.mark.parametrize("batches, world", [(7, 2), (8, 2), (1, 2), (5, 3), (0, 2), (4, 1)])
def test_shard_positions_cover_the_epoch_with_equal_counts(batches, world):
    shards = [shard_positions(batches, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    real = sorted(pos for s in shards for pos, pad in s if not pad)
    assert real == list(range(batches))  # every batch once
    pads = [pos for s in shards for pos, pad in s if pad]
    assert len(pads) == len(shards[0]) * world - batches and all(0 <= p < max(batches, 1) for p in pads)
    # step k of all ranks covers batches k*W .. k*W + W - 1, as one process with grad_accum = W
    assert [pos for pos, _ in shards[0]] == [p if p < batches else p % batches for p in range(0, len(shards[0]) * world, world)]


def test_shard_positions_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard_positions(4, 2, 2)


def test_sharded_loader_splits_each_epoch_deterministically(tmp_path):
    cache = write_synthetic_cache(tmp_path / "cache", {"train": 75, "val": 10, "test_01_known": 5, "test_02_unknown": 5})
    split = GraphSplit.open(cache / "train.pt")
    whole = GraphLoader(split, 8, shuffle=True, seed=3, max_nodes=40)
    ranks = [GraphLoader(split, 8, shuffle=True, seed=3, max_nodes=40) for _ in range(2)]
    for r, loader in enumerate(ranks):
        loader.shard(r, 2)
    for epoch in (1, 2):
        for loader in (whole, *ranks):
            loader.set_epoch(epoch)
        every = whole.batches()
        assert len(ranks[0]) == len(ranks[1]) == -(-len(every) // 2)
        interleaved = [b for pair in zip(ranks[0].batches(), ranks[1].batches()) for b in pair]
        real = [b for b, w in zip(interleaved, [w for pair in zip(*(l.batch_weights() for l in ranks)) for w in pair]) if w]
        assert [b.tolist() for b in real] == [b.tolist() for b in every]
    assert ranks[1].batch_weights()[-1] == (0.0 if len(every) % 2 else 1.0)
    ranks[0].max_nodes = 1000  # a new budget re-plans the epoch
    assert len(ranks[0].global_batches()) < len(every)


# -- 2 ranks through submitit's local executor ----------------------------------------------------------

def _fit(cache: Path, out: Path, overrides: list[str], die_at_step: int | None = None) -> dict:
    """Train the teacher model on the synthetic cache in this process (a rank, if a group is up);
    ``die_at_step`` interrupts it there as a preemption would (every rank at the same step)."""
    from pipeline import io
    from pipeline.can.classifier import build_model, cross_entropy_loss, validate_classifier
    from pipeline.train import Selection, Trainer, seed_everything

    profile = tiny_profile(["model.dropout=0.0", "train.epochs=3", "train.batch_size=16", *overrides])
    manifest = io.read_json(cache / "manifest.json")
    train, val = GraphSplit.open(cache / "train.pt"), GraphSplit.open(cache / "val.pt")
    seed_everything(0)
    model = build_model(profile, manifest, train)
    loss, steps = cross_entropy_loss(None), [0]

    def loss_fn(m, batch):
        steps[0] += 1
        if steps[0] == die_at_step:
            raise KeyboardInterrupt("preempted")
        return loss(m, batch)

    trainer = Trainer(model, loss_fn, GraphLoader(train, 16, shuffle=True, seed=0),
                      GraphLoader(val, 64), validate_classifier, profile.train, out, logging.getLogger("tests.ddp"),
                      selection=Selection("f1", "max", tie_metric="loss"), progress=False)
    result = trainer.fit()
    return {"rank": distributed.rank(), "world": distributed.world_size(), "val": result.best_metrics,
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def _resume_job(cache: str, out: str) -> dict:
    """Each rank: train straight; train again, preempted mid-epoch 2; resume that from its checkpoint."""
    export_rank_environment()
    with distributed.process_group(torch.device("cpu")):
        dropout = ["model.dropout=0.3"]  # dropout draws from each rank's own RNG stream
        straight = _fit(Path(cache), Path(out) / "straight", dropout)
        with contextlib.suppress(KeyboardInterrupt):
            _fit(Path(cache), Path(out) / "resumed", dropout, die_at_step=8 + 3)  # 8 steps per rank and epoch
        torch.manual_seed(1234)  # the requeued process starts from other RNG states
        resumed = _fit(Path(cache), Path(out) / "resumed", dropout)
        return {"straight": straight["weights"], "resumed": resumed["weights"]}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _close(ours: dict[str, float], theirs: dict[str, float]) -> None:
    for key, tol in TOLERANCE.items():
        assert ours[key] == pytest.approx(theirs[key], abs=tol), (key, ours, theirs)


def test_two_ranks_resume_exactly_after_an_interruption(tmp_path):
    cache = write_synthetic_cache(tmp_path / "cache")
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="local")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)
    ranks = executor.submit(_resume_job, str(cache), str(tmp_path)).results()
    for rank in ranks:
        assert _max_diff(rank["straight"], rank["resumed"]) == 0.0
    saved = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rng_by_rank"]) == 2
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


# -- 2 ranks of the teacher stage through the local executor and on the cluster -------------------------

COMMON = ["stages=[preprocess,teacher]", "model.dropout=0.0"]


def _in_process_teacher(root: Path, cache: Path, overrides: list[str]) -> RunDir:
    """A reference: the same chain, one rank, run in this process (no launcher at all)."""
    profile = load_profile("ci", [f"data.cache_dir={cache}", *COMMON, *overrides])
    run = RunDir.create(profile, root=root, run_id="one")
    for stage in profile.stages:
        run_stage(run.path, stage)
    return run


def _best(run: RunDir) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    blob = torch.load(run.path / "teacher" / "best.pt", weights_only=True)
    return blob["metrics"], blob["state_dict"]


@pytest.fixture(scope="module")
def one_rank(ci_cache, tmp_path_factory) -> dict[str, tuple[dict[str, float], dict[str, torch.Tensor]]]:
    """The CI teacher trained by one process: with grad_accum 2 (what 2 ranks must equal) and plain."""
    root = tmp_path_factory.mktemp("one-rank")
    return {"accum": _best(_in_process_teacher(root / "accum", ci_cache, ["train.grad_accum=2"])),
            "plain": _best(_in_process_teacher(root / "plain", ci_cache, []))}


def _matches_one_rank(run: RunDir, one_rank: dict) -> None:
    val, weights = _best(run)
    accum_val, accum_weights = one_rank["accum"]
    assert _max_diff(weights, accum_weights) < 1e-5
    assert val == pytest.approx(accum_val, abs=1e-5)
    _close(val, one_rank["plain"][0])
    assert "data-parallel: rank 0 of 2 (gloo" in (run.path / "teacher" / "log").read_text()
    lines = (run.path / "teacher" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == run.profile().train.epochs and all('"ranks": 2' in line for line in lines)


def _two_rank_args(root: Path, ci_cache: Path) -> list[str]:
    overrides = [f"data.cache_dir={ci_cache}", *COMMON, "resources.teacher.tasks_per_node=2"]
    return ["--profile", "ci", "--runs-root", str(root), *(arg for o in overrides for arg in ("-O", o))]


def test_two_gloo_ranks_through_the_local_executor_match_one_rank(ci_cache, one_rank, tmp_path, capsys):
    run_cli("dry-run", *_two_rank_args(tmp_path / "runs", ci_cache))
    assert ", 2 ranks, log " in capsys.readouterr().out
    run = only_run(tmp_path / "runs")
    (job_dir,) = {Path(r["stderr"]).parent for r in run.read_jobs()["history"] if r["stage"] == "teacher"}
    teacher_job = job_ids(run)["teacher"]
    assert sorted(p.name for p in job_dir.glob(f"{teacher_job}_*_result.pkl")) == [
        f"{teacher_job}_0_result.pkl", f"{teacher_job}_1_result.pkl"]
    _matches_one_rank(run, one_rank)


@pytest.mark.slurm
def test_two_gloo_ranks_on_the_cluster_match_one_rank(slurm_cluster, ci_cache, one_rank, tmp_path):
    run_cli("submit", *_two_rank_args(tmp_path / "runs", ci_cache))
    run = only_run(tmp_path / "runs")
    with cancel_on_failure(slurm_cluster, lambda: [run]):
        assert wait_settled(run, ["preprocess", "teacher"], timeout=300) == dict.fromkeys(["preprocess", "teacher"], "done")
        assert set(wait_jobs_ended(slurm_cluster, [run]).values()) == {"COMPLETED"}
    teacher_job = job_ids(run)["teacher"]
    job_dir = run.path / "logs" / teacher_job
    assert "#SBATCH --ntasks-per-node=2\n" in (job_dir / f"{teacher_job}_submission.sh").read_text()
    assert sorted(p.name for p in job_dir.glob("*_result.pkl")) == [
        f"{teacher_job}_0_result.pkl", f"{teacher_job}_1_result.pkl"]
    _matches_one_rank(run, one_rank)
