"""The model classes a checkpoint may name, and rebuilding a model from a checkpoint's contents.

A checkpoint is data: a file shared by a colleague or copied from another cluster must not run
code. ``torch.load(weights_only=True)`` keeps pickled objects out; this registry keeps the
``model_class`` string from choosing what to import or call. Only the project's own model
classes can be built, from plain constructor values, by a stable name that survives moving a
class to another module.
"""
from __future__ import annotations

import importlib
import math
from typing import Any, Iterator, Mapping

from torch import nn

from pipeline.errors import InputError

MODEL_CLASSES: dict[str, str] = {
    "gat_jk": "pipeline.can.models.gat:GATWithJK",
    "vgae": "pipeline.can.models.vgae:VGAE",
    "hgt": "pipeline.kg.models.hgt:HGT",
    "hetero_sage": "pipeline.kg.models.sage:HeteroSAGE",
}
"""Stable name (what best.pt stores) -> ``module:Class``. Strings, imported on first use, so the
core imports no workload (and loading a CAN model never imports the KG models)."""

LEGACY_NAMES: dict[str, str] = {
    "pipeline.models.gat:GATWithJK": "gat_jk",
    "pipeline.models.vgae:VGAE": "vgae",
    "pipeline.models.hgt:HGT": "hgt",
    "pipeline.models.sage:HeteroSAGE": "hetero_sage",
    **{path: name for name, path in MODEL_CLASSES.items()},
}
"""``module:Class`` as checkpoints written before the registry named them (the models then lived in
``pipeline/models/``), and the classes' present homes -> stable name."""


class _Models(Mapping[str, type[nn.Module]]):
    """Stable name -> class, importing a class's module only when it is looked up."""

    def __getitem__(self, name: str) -> type[nn.Module]:
        module, _, cls = MODEL_CLASSES[name].partition(":")
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(MODEL_CLASSES)

    def __len__(self) -> int:
        return len(MODEL_CLASSES)


MODELS: Mapping[str, type[nn.Module]] = _Models()
"""Stable name -> class."""

MAX_DEPTH = 4
"""Nesting of constructor values (the knowledge-graph models take lists of lists and dicts)."""


class CheckpointError(InputError):
    """A model file that cannot be rebuilt; the message names the file and what is wrong with it."""


def registered_name(model: nn.Module) -> str:
    """The name a checkpoint stores for ``model``: its stable name, else ``module:Class`` (which
    ``rebuild`` refuses: only registered classes load)."""
    cls = type(model)
    path = f"{cls.__module__}:{cls.__qualname__}"
    return next((name for name, registered in MODEL_CLASSES.items() if registered == path), path)


def known_names() -> str:
    return ", ".join(sorted(MODELS))


def model_class(name: object, source: object) -> type[nn.Module]:
    """The registered class ``name`` stands for; ``source`` (the file) is named in the error."""
    if not isinstance(name, str):
        raise CheckpointError(f"{source}: model_class is {type(name).__name__}, not a name; known: {known_names()}")
    stable = LEGACY_NAMES.get(name, name)
    if stable not in MODEL_CLASSES:
        raise CheckpointError(f"{source}: model_class {name!r} is not a model of this project, so it is not "
                              f"built (a checkpoint never chooses code to run); known: {known_names()}")
    return MODELS[stable]


def _plain(value: Any, depth: int = 0) -> bool:
    """None, bool, int, finite float, str, or lists and string-keyed dicts of those."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= MAX_DEPTH:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def check_kwargs(kwargs: object, source: object) -> dict[str, Any]:
    """``kwargs`` if it is a dict of plain constructor values, else one error naming the file and key."""
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: model_kwargs is {type(kwargs).__name__}, not a dict of constructor values")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not _plain(value):
            raise CheckpointError(f"{source}: model_kwargs[{key!r}] is not a plain value (numbers, strings, and "
                                  f"lists or dicts of them, nested at most {MAX_DEPTH} deep)")
    return kwargs


def rebuild(blob: object, source: object) -> nn.Module:
    """The model a best.pt's contents describe (registered class, plain kwargs, weights), on the CPU
    or wherever its tensors were mapped; every problem is one ``CheckpointError`` naming ``source``."""
    if not isinstance(blob, Mapping) or not {"model_class", "model_kwargs", "state_dict"} <= set(blob):
        found = sorted(map(str, blob)) if isinstance(blob, Mapping) else type(blob).__name__
        raise CheckpointError(f"{source}: not a model file (needs model_class, model_kwargs and state_dict; "
                              f"found {found})")
    cls = model_class(blob["model_class"], source)
    kwargs = check_kwargs(blob["model_kwargs"], source)
    try:
        model = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: {cls.__name__} cannot be built from its model_kwargs: {exc}") from None
    if not isinstance(blob["state_dict"], Mapping):
        raise CheckpointError(f"{source}: state_dict is {type(blob['state_dict']).__name__}, not tensors by name")
    try:
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{source}: weights do not fit the {cls.__name__} its model_kwargs describe: "
                              f"{first}") from None
    return model
