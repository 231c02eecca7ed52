"""Data-parallel training: the epoch split across ranks, and 2 CPU ranks (gloo) against 1 rank.

W ranks with ``grad_accum = 1`` take the optimizer steps that 1 process with ``grad_accum = W``
takes (each step averages the gradients of the same W consecutive batches), so with dropout off
their weights agree to float rounding. Against a plain 1-rank run (twice the steps of half the
batch) only the outcome is comparable: validation metrics within a tolerance.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import submitit
import torch

from jobs.stage_job import export_rank_environment
from pipeline import distributed
from pipeline.config import load_profile
from pipeline.data.cache import GraphSplit
from pipeline.data.loader import GraphLoader
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

def _fit(cache: Path, out: Path, overrides: list[str]) -> dict:
    """Train the teacher model on the synthetic cache in this process (a rank, if a group is up)."""
    from pipeline.stages.teacher import build_model, cross_entropy_loss, validate_classifier
    from pipeline.train import Selection, Trainer, seed_everything
    from pipeline import io

    profile = tiny_profile(["model.dropout=0.0", "train.epochs=3", "train.batch_size=16", *overrides])
    manifest = io.read_json(cache / "manifest.json")
    train, val = GraphSplit.open(cache / "train.pt"), GraphSplit.open(cache / "val.pt")
    seed_everything(0)
    model = build_model(profile, manifest, train)
    trainer = Trainer(model, cross_entropy_loss(None), GraphLoader(train, 16, shuffle=True, seed=0),
                      GraphLoader(val, 64), validate_classifier, profile.train, out, logging.getLogger("tests.ddp"),
                      selection=Selection("f1", "max", tie_metric="loss"), progress=False)
    result = trainer.fit()
    return {"rank": distributed.rank(), "world": distributed.world_size(), "val": result.best_metrics,
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def _rank_job(cache: str, out: str) -> dict:
    """What each task of the local job runs: the launch layer's rank export, then one process group."""
    export_rank_environment()
    with distributed.process_group(torch.device("cpu")):
        return _fit(Path(cache), Path(out), [])


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _close(ours: dict[str, float], theirs: dict[str, float]) -> None:
    for key, tol in TOLERANCE.items():
        assert ours[key] == pytest.approx(theirs[key], abs=tol), (key, ours, theirs)


def test_two_gloo_ranks_through_the_local_executor_match_one_rank(tmp_path):
    cache = write_synthetic_cache(tmp_path / "cache")  # 240 train graphs: 15 batches, so one rank pads
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="local")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)
    job = executor.submit(_rank_job, str(cache), str(tmp_path / "two"))
    one_accum = _fit(cache, tmp_path / "one_accum", ["train.grad_accum=2"])
    one = _fit(cache, tmp_path / "one", [])
    ranks = job.results()

    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]
    assert _max_diff(ranks[0]["weights"], ranks[1]["weights"]) == 0.0  # replicas never drift
    assert _max_diff(ranks[0]["weights"], one_accum["weights"]) < 1e-5
    assert ranks[0]["val"] == pytest.approx(one_accum["val"], abs=1e-5)
    _close(ranks[0]["val"], one["val"])
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all('"ranks": 2' in line for line in lines)  # rank 0 alone wrote them
    assert not (tmp_path / "two" / "log").exists()


# -- 2 ranks of the teacher stage on the cluster and through the local executor -------------------------

def _in_process_teacher(root: Path, cache: Path, overrides: list[str]) -> RunDir:
    """The reference: the same chain, one rank, run in this process (no launcher at all)."""
    profile = load_profile("ci", [f"data.cache_dir={cache}", "stages=[preprocess,teacher]", *overrides])
    run = RunDir.create(profile, root=root, run_id="one")
    for stage in profile.stages:
        run_stage(run.path, stage)
    return run


def _best(run: RunDir) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    blob = torch.load(run.path / "teacher" / "best.pt", weights_only=True)
    return blob["metrics"], blob["state_dict"]


@pytest.mark.slurm
def test_two_gloo_ranks_on_the_cluster_match_one_rank(slurm_cluster, ci_cache, tmp_path):
    common = ["-O", f"data.cache_dir={ci_cache}", "-O", "stages=[preprocess,teacher]", "-O", "model.dropout=0.0"]
    run_cli("submit", "--profile", "ci", "--runs-root", str(tmp_path / "slurm"), *common,
            "-O", "resources.teacher.tasks_per_node=2")
    on_slurm = only_run(tmp_path / "slurm")
    with cancel_on_failure(slurm_cluster, lambda: [on_slurm]):
        run_cli("dry-run", "--profile", "ci", "--runs-root", str(tmp_path / "local"), *common,
                "-O", "resources.teacher.tasks_per_node=2")
        local = only_run(tmp_path / "local")
        accum = _in_process_teacher(tmp_path / "accum", ci_cache, ["model.dropout=0.0", "train.grad_accum=2"])
        plain = _in_process_teacher(tmp_path / "plain", ci_cache, ["model.dropout=0.0"])
        assert wait_settled(on_slurm, ["preprocess", "teacher"], timeout=300) == dict.fromkeys(["preprocess", "teacher"], "done")
        assert set(wait_jobs_ended(slurm_cluster, [on_slurm]).values()) == {"COMPLETED"}

    teacher_job = job_ids(on_slurm)["teacher"]
    script = (on_slurm.path / "logs" / teacher_job / f"{teacher_job}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2\n" in script
    assert sorted(p.name for p in (on_slurm.path / "logs" / teacher_job).glob("*_result.pkl")) == [
        f"{teacher_job}_0_result.pkl", f"{teacher_job}_1_result.pkl"]
    assert "data-parallel: rank 0 of 2 (gloo" in (on_slurm.path / "teacher" / "log").read_text()

    (slurm_val, slurm_w), (local_val, local_w) = _best(on_slurm), _best(local)
    (accum_val, accum_w), (plain_val, _) = _best(accum), _best(plain)
    assert _max_diff(slurm_w, local_w) == 0.0  # the same ranks, launched two ways
    assert _max_diff(slurm_w, accum_w) < 1e-5 and slurm_val == pytest.approx(accum_val, abs=1e-5)
    _close(slurm_val, plain_val)
