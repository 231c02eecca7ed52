"""Device selection ('auto' picks CUDA, then MPS, then CPU) and peak memory of the device and the process.

Peak memory has one source of truth here: the training loop logs it per epoch, the student stages
record the device peak of the whole stage, the runner the process's peak resident memory. torch
is imported inside the functions, so the runner (imported by the job launcher) stays torch-free.
"""
from __future__ import annotations

import resource
from typing import TYPE_CHECKING

from pipeline.errors import UserError

if TYPE_CHECKING:
    import torch

MiB = 2**20


class DeviceError(UserError, RuntimeError):
    """The profile asks for a device this machine does not have."""


def resolve_device(name: str) -> torch.device:
    import torch

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


def reset_peak(device: torch.device) -> None:
    """Start measuring ``peak_device_mb`` afresh (CUDA; elsewhere there is nothing to reset)."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_device_mb(device: torch.device) -> float | None:
    """Peak allocated memory on a CUDA device since the last ``reset_peak``, in MiB; None off CUDA
    (the CPU's share is the process's resident memory, ``peak_rss_mb``)."""
    if device.type != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated(device) / MiB, 1)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
