"""The training package: the one training loop and the components it uses.

    loop.py        Trainer (fit, epochs, steps, validation, early stopping, OOM back-off), FitResult
    checkpoint.py  Checkpointer: checkpoint.pt and best.pt, RNG states, progress, resume-key checks
    layout.py      where a fit's files live; the checkpoint a running stage resumes from (no torch)
    selection.py   Selection: the metric that picks the best epoch
    models.py      load_model (a best.pt back to a model, through ``pipeline.model_registry``), predict,
                   count_parameters
    runtime.py     configure_threads, seed_everything
    parallel.py    the model and its loss as one module, in DDP with several ranks

Stages import the public names from here (``from pipeline.train import Trainer``). They are loaded
on first use, so importing a torch-free module of the package (``layout``, which the requeue hook
uses inside a signal handler) does not import torch through this file.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.train.checkpoint import Checkpointer, Progress, rng_state, set_rng_state
    from pipeline.train.layout import BEST, CHECKPOINT, METRICS, active_checkpoint, checkpoint_path, fit_dir
    from pipeline.train.loop import FitResult, LossFn, Trainer, ValidateFn
    from pipeline.train.models import count_parameters, load_model, predict
    from pipeline.train.runtime import configure_threads, seed_everything
    from pipeline.train.selection import Selection

__all__ = [
    "BEST", "CHECKPOINT", "METRICS", "Checkpointer", "FitResult", "LossFn", "Progress", "Selection", "Trainer",
    "ValidateFn", "active_checkpoint", "checkpoint_path", "configure_threads", "count_parameters", "fit_dir", "load_model", "predict",
    "rng_state", "seed_everything", "set_rng_state",
]

_HOMES: dict[str, tuple[str, ...]] = {
    "loop": ("Trainer", "FitResult", "LossFn", "ValidateFn"),
    "checkpoint": ("Checkpointer", "Progress", "rng_state", "set_rng_state"),
    "layout": ("CHECKPOINT", "BEST", "METRICS", "fit_dir", "checkpoint_path", "active_checkpoint"),
    "selection": ("Selection",),
    "models": ("load_model", "predict", "count_parameters"),
    "runtime": ("configure_threads", "seed_everything"),
}
"""Module of this package -> the public names it defines."""
_EXPORTS = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pipeline.train.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
