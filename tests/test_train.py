"""GraphLoader batching and the Trainer: learning, checkpoints, exact resume, early stop, metrics."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.can.classifier import class_weights, cross_entropy_loss, validate_classifier
from pipeline.can.data.cache import GraphSplit
from pipeline.can.data.loader import GraphLoader, budget_boundaries
from pipeline.can.models.gat import GATWithJK
from pipeline.train import Selection, Trainer, load_model, predict, seed_everything
from pipeline.train.layout import active_checkpoint, checkpoint_path, fit_dir
from tests.helpers import EDGE_FEATURES, NODE_FEATURES, VOCAB, synthetic_split, tiny_profile

LOG = logging.getLogger("test.train")


@pytest.fixture(scope="module")
def splits():
    return GraphSplit(synthetic_split(240, seed=1)), GraphSplit(synthetic_split(80, seed=2))


# -- loader ------------------------------------------------------------------------

def test_loader_covers_every_graph_once_and_collates(splits):
    train, _ = splits
    loader = GraphLoader(train, batch_size=50)
    batches = list(loader)
    assert len(loader) == len(batches) == 5
    assert [b.num_graphs for b in batches] == [50, 50, 50, 50, 40]
    assert torch.equal(torch.cat([b.y for b in batches]), train.y)
    b = batches[0]
    assert b.batch.max() == 49 and b.edge_index.max() < b.num_nodes and b.num_nodes == int(train.node_ptr[50])


def test_shuffle_is_a_function_of_seed_and_epoch(splits):
    train, _ = splits
    a, b = GraphLoader(train, 32, shuffle=True, seed=7), GraphLoader(train, 32, shuffle=True, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert torch.equal(a.order(), b.order())
    assert sorted(a.order().tolist()) == list(range(len(train)))
    b.set_epoch(4)
    assert not torch.equal(a.order(), b.order())
    assert not torch.equal(GraphLoader(train, 32, shuffle=True, seed=8).order(), GraphLoader(train, 32, shuffle=True, seed=7).order())


def test_loader_on_a_subset(splits):
    train, _ = splits
    subset = torch.tensor([5, 9, 11, 200])
    ys = torch.cat([b.y for b in GraphLoader(train, 3, indices=subset)])
    assert torch.equal(ys, train.y[subset])


def test_budget_boundaries_greedy_fill():
    sizes = torch.tensor([3, 4, 2, 10, 1, 1, 1, 5])
    # budget 8: [3,4] [2] [10 alone: over budget] [1,1,1,5]
    assert budget_boundaries(sizes, max_nodes=8, max_graphs=100) == [2, 3, 4]
    # the graph cap applies too
    assert budget_boundaries(sizes, max_nodes=100, max_graphs=3) == [3, 6]
    assert budget_boundaries(torch.tensor([], dtype=torch.long), 8, 8) == []


def test_node_budget_batches_respect_budget(splits):
    train, _ = splits
    loader = GraphLoader(train, batch_size=1000, shuffle=True, seed=1, max_nodes=40)
    batches = list(loader)
    assert len(batches) == len(loader)
    assert all(b.num_nodes <= 40 for b in batches)
    assert sum(b.num_graphs for b in batches) == len(train)
    assert sum(b.num_nodes for b in batches) == int(train.node_ptr[-1])


# -- trainer -------------------------------------------------------------------------

def _trainer(splits, stage_dir, *, loss_fn=None, validate_fn=validate_classifier, selection=Selection("f1", "max"),
             **train_overrides):
    train, val = splits
    overrides = [f"train.{k}={v}" for k, v in train_overrides.items()]
    profile = tiny_profile(overrides)
    seed_everything(profile.train.seed)
    model = GATWithJK(num_ids=len(VOCAB) + 1, node_features=len(NODE_FEATURES), edge_features=len(EDGE_FEATURES),
                      **profile.model.model_dump())
    return Trainer(model, loss_fn or cross_entropy_loss(class_weights(train.y)),
                   GraphLoader(train, profile.train.batch_size, shuffle=True, seed=profile.train.seed),
                   GraphLoader(val, 128), validate_fn, profile.train, stage_dir, LOG,
                   selection=selection, resume_key="k", progress=False)


def _metrics_lines(stage_dir):
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def test_trainer_learns_the_rule_and_writes_files(splits, tmp_path):
    trainer = _trainer(splits, tmp_path, epochs=6, grad_accum=2)
    result = trainer.fit()
    assert result.epochs_run == 6 and not result.stopped_early
    assert result.best_metrics["f1"] > 0.85, result.best_metrics
    lines = _metrics_lines(tmp_path)
    assert [line["epoch"] for line in lines] == list(range(1, 7))
    assert {"train_loss", "val", "lr", "seconds", "peak_mem_mb", "best"} <= set(lines[0])
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert (tmp_path / "checkpoint.pt").exists()
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == result.best_epoch and best["metric"] == result.best_metric
    model = load_model(tmp_path / "best.pt")
    logits, y = predict(model, GraphLoader(splits[1], 64))
    assert logits.shape == (80, 2)


def test_checkpoint_every_epoch_and_exact_resume(splits, tmp_path):
    straight = _trainer(splits, tmp_path / "a", epochs=3, patience=10)
    straight.fit()

    calls = {"n": 0}
    base_loss = cross_entropy_loss(class_weights(splits[0].y))

    def dies_in_epoch_two(model, batch):
        calls["n"] += 1
        if calls["n"] == 8 + 3:  # 8 batches per epoch: fail mid-way through epoch 2
            raise KeyboardInterrupt("preempted")
        return base_loss(model, batch)

    interrupted = _trainer(splits, tmp_path / "b", loss_fn=dies_in_epoch_two, epochs=3, patience=10)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert interrupted.checkpoint() == tmp_path / "b" / "checkpoint.pt"

    torch.manual_seed(1234)  # the resumed process starts from other RNG states and other init weights
    resumed = _trainer(splits, tmp_path / "b", epochs=3, patience=10)
    result = resumed.fit()
    assert result.epochs_run == 3
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [line["epoch"] for line in _metrics_lines(tmp_path / "b")] == [1, 2, 3]
    a, b = _metrics_lines(tmp_path / "a"), _metrics_lines(tmp_path / "b")
    assert [x["train_loss"] for x in a] == [x["train_loss"] for x in b]


def test_resume_ignores_checkpoint_of_other_inputs(splits, tmp_path):
    _trainer(splits, tmp_path, epochs=1).fit()
    other = _trainer(splits, tmp_path, epochs=2)
    other.resume_key = "other"
    assert other.fit().epochs_run == 2
    assert [line["epoch"] for line in _metrics_lines(tmp_path)] == [1, 2]


def test_early_stopping_on_patience(splits, tmp_path):
    def flat(model, loader):
        return {"loss": 1.0}

    trainer = _trainer(splits, tmp_path, validate_fn=flat, selection=Selection("loss", "min"), epochs=10, patience=2)
    result = trainer.fit()
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    # a finished run resumes as finished: no more epochs
    again = _trainer(splits, tmp_path, validate_fn=flat, selection=Selection("loss", "min"), epochs=10, patience=2)
    assert again.fit().epochs_run == 3
    assert len(_metrics_lines(tmp_path)) == 3


def test_missing_selection_metric_names_the_keys(splits, tmp_path):
    trainer = _trainer(splits, tmp_path, validate_fn=lambda m, l: {"acc": 1.0}, epochs=1)
    with pytest.raises(KeyError, match="f1"):
        trainer.fit()


def test_selection_ties_and_non_finite_values():
    sel = Selection("f1", "max", tie_metric="loss", tie_mode="min")
    assert sel.better({"f1": 0.5, "loss": 1.0}, None)
    assert sel.better({"f1": 0.6, "loss": 9.0}, {"f1": 0.5, "loss": 1.0})
    assert sel.better({"f1": 1.0, "loss": 0.1}, {"f1": 1.0, "loss": 0.2})
    assert not sel.better({"f1": 1.0, "loss": 0.2}, {"f1": 1.0, "loss": 0.2})
    assert not sel.better({"f1": float("nan"), "loss": 0.0}, {"f1": 0.1, "loss": 1.0})
    assert not Selection("f1").better({"f1": 1.0, "loss": 0.1}, {"f1": 1.0, "loss": 0.2})


# -- the requeue hook ------------------------------------------------------------------

def test_requeue_hook_names_the_checkpoint_of_the_fit_in_progress(splits, tmp_path):
    run = tmp_path / "run"
    base = cross_entropy_loss(class_weights(splits[0].y))
    seen = []

    def hook_each_step(stage):
        def loss_fn(model, batch):
            seen.append(active_checkpoint(run, stage))  # what the hook names if the signal lands now
            return base(model, batch)
        return loss_fn

    # a stage that trains in its own folder
    _trainer(splits, fit_dir(run, "teacher"), loss_fn=hook_each_step("teacher"), epochs=2).fit()
    assert seen == [None] * 8 + [checkpoint_path(run, "teacher")] * 8   # 8 batches per epoch
    assert active_checkpoint(run, "teacher") is None                  # no fit runs any more

    # a stage that trains several models one after the other (the student: kd/, then no_kd/)
    _trainer(splits, fit_dir(run, "student", "kd"), epochs=2).fit()
    seen.clear()
    _trainer(splits, fit_dir(run, "student", "no_kd"), loss_fn=hook_each_step("student"), epochs=2).fit()
    # in no_kd's first epoch the newest checkpoint is kd's, but kd is finished: the job restarts no_kd
    assert seen == [None] * 8 + [checkpoint_path(run, "student", "no_kd")] * 8
    assert active_checkpoint(run, "student") is None


def test_requeue_hook_imports_no_torch_and_the_model_registry_no_workload():
    """The hook runs in a signal handler (no torch import may start there); the core imports no workload."""
    code = ("import sys, jobs.stage_job, pipeline.train; print('torch' in sys.modules);"
            "import pipeline.model_registry, pipeline.train.models;"
            "print(sorted(m for m in sys.modules if m.startswith(('pipeline.can', 'pipeline.kg'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.split() == ["False", "[]"]
