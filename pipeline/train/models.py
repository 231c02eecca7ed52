"""Models: rebuilding the model a best.pt stores, its size, and inference with it."""
from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import MissingFileError
from pipeline.model_registry import CheckpointError, rebuild
from pipeline.train.runtime import to_device


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model stored in a best.pt (class + kwargs + weights), in eval mode.

    The file is data, never code: its class must be one of the project's registered models
    (``pipeline.model_registry``), built from plain values; anything else is a CheckpointError
    naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"model file {path} does not exist (has its training stage finished?)")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a model file that loads without running code ({first})") from None
    return rebuild(blob, path).to(device).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over a loader, gathered on the CPU (inference for validation and scoring)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    logits, labels = [], []
    for batch in loader:
        batch = to_device(batch, device)
        logits.append(model(batch).float().cpu())
        labels.append(batch.y.cpu())
    if not logits:
        return torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)
