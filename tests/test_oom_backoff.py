"""Out-of-memory back-off: a step that runs out of memory shrinks the node budget and the epoch reruns."""
import json
import logging

import pytest
import torch

from pipeline.can.classifier import cross_entropy_loss, validate_classifier
from pipeline.can.data.cache import GraphSplit
from pipeline.can.data.loader import GraphLoader, validation_loader
from pipeline.can.models.gat import GATWithJK
from pipeline.train import Trainer, seed_everything
from tests.helpers import EDGE_FEATURES, NODE_FEATURES, VOCAB, synthetic_split, tiny_profile

LOG = logging.getLogger("test.oom")


def oom_above(limit_nodes: int, calls: list[int]):
    """A loss that fails like the CUDA allocator whenever a batch has more than ``limit_nodes`` nodes."""
    inner = cross_entropy_loss(None)

    def loss_fn(model, batch):
        calls.append(batch.num_nodes)
        if batch.num_nodes > limit_nodes:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for {batch.num_nodes} nodes")
        return inner(model, batch)
    return loss_fn


def make_trainer(tmp_path, loss_fn, max_nodes):
    train, val = GraphSplit(synthetic_split(120, seed=1)), GraphSplit(synthetic_split(40, seed=2))
    profile = tiny_profile(["train.epochs=2", "train.batch_size=64"])
    seed_everything(0)
    model = GATWithJK(num_ids=len(VOCAB) + 1, node_features=len(NODE_FEATURES), edge_features=len(EDGE_FEATURES),
                      **profile.model.model_dump())
    loader = GraphLoader(train, 64, shuffle=True, seed=0, max_nodes=max_nodes)
    return Trainer(model, loss_fn, loader, validation_loader(val, 16, max_nodes), validate_classifier, profile.train, tmp_path, LOG,
                   resume_key="k", progress=False), loader


def test_out_of_memory_shrinks_budget_and_finishes(tmp_path):
    calls: list[int] = []
    trainer, loader = make_trainer(tmp_path, oom_above(150, calls), max_nodes=2000)
    result = trainer.fit()
    assert result.epochs_run == 2
    assert loader.max_nodes < 2000 and loader.max_nodes <= 250   # halved until batches fit
    assert trainer.val_loader.max_nodes == loader.max_nodes      # validation batches follow it down
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    backoffs = [e for e in events if e.get("event") == "oom_backoff"]
    assert backoffs and backoffs[-1]["max_nodes"] == loader.max_nodes
    assert [e["epoch"] for e in events if "train_loss" in e] == [1, 2]
    # the shrunk plan survives in the checkpoint, so a resumed job does not hit the same OOM
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["loader_max_nodes"] == loader.max_nodes


def test_out_of_memory_at_the_floor_is_a_clear_error(tmp_path):
    calls: list[int] = []
    trainer, _ = make_trainer(tmp_path, oom_above(0, calls), max_nodes=2000)
    with pytest.raises(MemoryError, match="node budget") as err:
        trainer.fit()
    assert tmp_path.name in str(err.value)
    assert len(calls) < 50     # bounded: halving reaches the floor quickly, no endless retry
