"""Device selection: 'auto' picks CUDA, then MPS, then CPU."""
from __future__ import annotations

import torch

from pipeline.errors import UserError


class DeviceError(UserError, RuntimeError):
    """The profile asks for a device this machine does not have."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("profile asks for device: cuda but no CUDA device is visible (set device: auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("profile asks for device: mps but MPS is not available (set device: auto or cpu)")
    return torch.device(name)
