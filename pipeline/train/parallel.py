"""The train model as the loop steps it: the model and its loss as one module, wrapped for DDP when
the stage runs as several ranks (``pipeline.distributed``), with the train loader sharded to match."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Any]]


class LossForward(nn.Module):
    """The model and its loss as one forward: DDP then sees every parameter the loss uses (its hooks
    reduce their gradients), not only those of ``model.forward``."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> tuple[torch.Tensor, Any]:
        return self.loss_fn(self.model, batch)


def data_parallel(model: nn.Module, loss_fn: LossFn, train_loader: Iterable, rank: int, world_size: int,
                  device: torch.device, find_unused: bool, fit_name: str) -> nn.Module:
    """Wrap for DDP and shard the loader when there is more than one rank; else the model's loss as is."""
    if world_size == 1:
        return LossForward(model, loss_fn)
    if not hasattr(train_loader, "shard"):
        raise TypeError(f"{fit_name}: {type(train_loader).__name__} cannot be split across {world_size} ranks (it "
                        "has no shard(rank, world) method); run this stage on one GPU (resources.<stage>.gpus=1, "
                        "nodes=1) or give the loader a shard method")
    train_loader.shard(rank, world_size)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(LossForward(model, loss_fn), device_ids=ids,
                                               find_unused_parameters=find_unused)
