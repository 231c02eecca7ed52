"""A checkpoint is data, not code: load_model builds only the project's registered models, from
plain constructor values, and refuses anything else with one error naming the file."""
from __future__ import annotations

import logging
import os
import random
import re

import numpy as np
import pytest
import torch

from pipeline.can.classifier import class_weights, cross_entropy_loss, validate_classifier
from pipeline.can.data.cache import GraphSplit
from pipeline.can.data.loader import GraphLoader
from pipeline.can.models.gat import GATWithJK
from pipeline.errors import is_expected
from pipeline.model_registry import MODELS, CheckpointError
from pipeline.train import Checkpointer, Progress, Selection, Trainer, load_model, seed_everything
from tests.helpers import EDGE_FEATURES, NODE_FEATURES, VOCAB, synthetic_split, tiny_profile

KNOWN = "gat_jk, hetero_sage, hgt, vgae"


def small_gat() -> GATWithJK:
    torch.manual_seed(0)
    return GATWithJK(num_ids=len(VOCAB) + 1, node_features=len(NODE_FEATURES), edge_features=len(EDGE_FEATURES),
                     hidden=4, heads=2, layers=2, id_embed_dim=4, mlp_hidden=8, dropout=0.0)


def starts(path, pattern: str) -> str:
    """A regex for a message that begins with ``path``, then ``pattern``."""
    return rf"^{re.escape(str(path))}: {pattern}"


def save(path, model_class, model_kwargs, state_dict=None):
    torch.save({"model_class": model_class, "model_kwargs": model_kwargs, "state_dict": state_dict or {},
                "epoch": 1, "metric": 0.5, "metrics": {}}, path)
    return path


@pytest.mark.parametrize("model_class,kwargs", [
    ("os:system", {"command": "touch {marker}"}),
    ("subprocess:run", {"args": ["touch", "{marker}"]}),
    ("builtins:exec", {"source": "open('{marker}', 'w')"}),
])
def test_checkpoint_naming_a_callable_runs_nothing_and_names_file_and_known_models(tmp_path, model_class, kwargs):
    marker = tmp_path / "marker"
    kwargs = {k: [x.format(marker=marker) for x in v] if isinstance(v, list) else v.format(marker=marker)
              for k, v in kwargs.items()}
    path = save(tmp_path / "best.pt", model_class, kwargs)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert not marker.exists()
    message = str(err.value)
    assert message.startswith(f"{path}: model_class {model_class!r} is not a model of this project")
    assert message.endswith(f"known: {KNOWN}")
    assert is_expected(err.value)   # the command lines print it as one line


def test_pickled_code_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "best.pt"
    torch.save({"model_class": "gat_jk", "model_kwargs": {}, "state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match=starts(path, r"not a model file that loads without running code")):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("kwargs,key", [
    ({"num_ids": torch.tensor(13)}, "num_ids"),
    ({"num_ids": 13, "hidden": {1: 2}}, "hidden"),
    ({"num_ids": 13, "hidden": [[[[[4]]]]]}, "hidden"),
    ({"num_ids": float("nan")}, "num_ids"),
])
def test_constructor_values_must_be_plain(tmp_path, kwargs, key):
    path = save(tmp_path / "best.pt", "gat_jk", kwargs)
    with pytest.raises(CheckpointError, match=starts(path, rf"model_kwargs\['{key}'\] is not a plain value")):
        load_model(path)


def test_kwargs_that_are_not_a_dict_or_do_not_fit_are_one_error(tmp_path):
    path = save(tmp_path / "a.pt", "gat_jk", ["not", "a", "dict"])
    with pytest.raises(CheckpointError, match=starts(path, r"model_kwargs is list")):
        load_model(path)
    path = save(tmp_path / "b.pt", "gat_jk", {"no_such_argument": 1})
    with pytest.raises(CheckpointError, match=starts(path, r"GATWithJK cannot be built from its model_kwargs")):
        load_model(path)
    model = small_gat()
    path = save(tmp_path / "c.pt", "gat_jk", {**model.model_kwargs, "hidden": 8}, model.state_dict())
    with pytest.raises(CheckpointError, match=starts(path, r"weights do not fit the GATWithJK")):
        load_model(path)
    (tmp_path / "d.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=starts(tmp_path / 'd.pt', r"not a model file")):
        load_model(tmp_path / "d.pt")
    torch.save({"state_dict": {}}, tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match=r"needs model_class, model_kwargs and state_dict"):
        load_model(tmp_path / "e.pt")


def test_checkpoints_naming_module_and_class_still_load(tmp_path):
    model = small_gat().eval()
    path = save(tmp_path / "best.pt", "pipeline.can.models.gat:GATWithJK", model.model_kwargs, model.state_dict())
    again = load_model(path)
    assert type(again) is GATWithJK and not again.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_trainer_writes_the_stable_name_and_it_loads(tmp_path):
    train, val = GraphSplit(synthetic_split(48, seed=1)), GraphSplit(synthetic_split(16, seed=2))
    profile = tiny_profile(["train.epochs=1"])
    seed_everything(profile.train.seed)
    model = GATWithJK(num_ids=len(VOCAB) + 1, node_features=len(NODE_FEATURES), edge_features=len(EDGE_FEATURES),
                      **profile.model.model_dump())
    Trainer(model, cross_entropy_loss(class_weights(train.y)), GraphLoader(train, 16), GraphLoader(val, 16),
            validate_classifier, profile.train, tmp_path, logging.getLogger("test.checkpoints"),
            selection=Selection("f1", "max"), resume_key="k", progress=False).fit()
    assert torch.load(tmp_path / "best.pt", weights_only=True)["model_class"] == "gat_jk"
    assert MODELS["gat_jk"] is GATWithJK
    assert type(load_model(tmp_path / "best.pt")) is GATWithJK


def test_checkpoints_written_before_the_layout_move_still_load(tmp_path):
    """best.pt files written before the registry named the models hold ``pipeline.models.<module>:<Class>``."""
    model = small_gat().eval()
    path = save(tmp_path / "best.pt", "pipeline.models.gat:GATWithJK", model.model_kwargs, model.state_dict())
    again = load_model(path)
    assert type(again) is GATWithJK
    assert all(torch.equal(again.state_dict()[name], tensor) for name, tensor in model.state_dict().items())


def test_checkpointer_restores_weights_optimizer_and_rng_streams(tmp_path):
    def parts(seed: int):
        torch.manual_seed(seed)
        model = small_gat()
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        return model, optimizer, Checkpointer(tmp_path, model, optimizer, torch.amp.GradScaler("cuda", enabled=False),
                                              resume_key="inputs-1", log=logging.getLogger("test.checkpoints"))

    model, optimizer, saver = parts(0)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()                                  # optimizer state worth restoring (AdamW moments)
    progress = Progress(epoch=3, best_metric=0.75, best_epoch=2, best_metrics={"f1": 0.75}, bad_epochs=1)
    saver.save(saver.state_dict(progress, loader_max_nodes=40))
    draws = (random.random(), np.random.rand(), torch.rand(3))   # what the next epoch would draw

    fresh_model, fresh_optimizer, loader = parts(1)   # a requeued process: other weights, other RNG states
    state = loader.load(torch.device("cpu"))
    assert loader.restore(state) == progress and state["loader_max_nodes"] == 40
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()))
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"] == 1
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(3), draws[2])

    loader.resume_key = "inputs-2"                    # a changed profile: the checkpoint is not resumed
    assert loader.load(torch.device("cpu")) is None


def test_a_second_rewind_in_the_same_epoch_lands_on_the_snapshot_again(tmp_path):
    torch.manual_seed(0)
    model = small_gat()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    saver = Checkpointer(tmp_path, model, optimizer, torch.amp.GradScaler("cuda", enabled=False),
                         resume_key="inputs-1", log=logging.getLogger("test.checkpoints"))

    def step() -> None:
        optimizer.zero_grad()
        sum(p.sum() for p in model.parameters()).backward()
        optimizer.step()

    step()                                            # moments worth keeping
    snapshot = saver.snapshot()
    moments = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    for _ in range(2):                                # two out-of-memory retries of one epoch
        step()
        saver.rewind(snapshot)
        state = optimizer.state_dict()["state"][0]
        assert all(torch.equal(state[k], moments[k]) for k in moments)
