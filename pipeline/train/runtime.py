"""Process setup for training and inference: thread pools, seeds, moving a batch to the device."""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def configure_threads(threads: int | None) -> int:
    """Use the cpus the job was given: train.threads, else SLURM_CPUS_PER_TASK, else the affinity mask."""
    n = threads or _env_int("SLURM_CPUS_PER_TASK") or len(os.sched_getaffinity(0))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    return batch.to(device, non_blocking=True) if hasattr(batch, "to") else batch


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None
