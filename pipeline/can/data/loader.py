"""Batches of window graphs sliced from a memory-mapped split.

The loader only decides *which* graphs go together; ``GraphSplit.collate`` gathers them with
offset arithmetic. Shuffling is a pure function of (seed, epoch), so a job resumed at epoch k
sees exactly the batches an uninterrupted job would have seen, with no sampler state to save.

Data-parallel training shards the epoch, not the data: every rank computes the same batches of the
whole epoch and keeps its share of them (``shard``), so the split stays a function of (seed, epoch)
and every rank has the same number of steps.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pipeline.can.data.cache import GraphBatch, GraphSplit
from pipeline.distributed import shard_positions


class GraphLoader:
    """Iterate ``GraphBatch`` objects over ``split`` (or the subset ``indices`` of it).

    ``batch_size`` caps graphs per batch. ``max_nodes`` additionally caps nodes per batch: graphs
    are taken in order until the next would exceed the budget (a graph larger than the budget gets
    a batch of its own), which keeps activation memory flat when graph sizes vary.
    """

    def __init__(
        self,
        split: GraphSplit,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        indices: torch.Tensor | None = None,
        max_nodes: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_nodes is not None and max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1 or None, got {max_nodes}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.indices = (torch.arange(len(split)) if indices is None
                        else torch.as_tensor(indices, dtype=torch.long))
        self.epoch = 0
        self.rank, self.world = 0, 1
        self._plan: tuple[int, list[torch.Tensor]] | None = None
        self._max_nodes = max_nodes

    @property
    def max_nodes(self) -> int | None:
        """Node budget per batch (None: graphs only); setting it re-plans the epoch's batches."""
        return self._max_nodes

    @max_nodes.setter
    def max_nodes(self, value: int | None) -> None:
        self._max_nodes = value
        self._plan = None

    def shard(self, rank: int, world: int) -> None:
        """Yield only rank ``rank``'s share of each epoch's batches (see ``shard_positions``)."""
        shard_positions(0, rank, world)  # validates rank and world
        self.rank, self.world = rank, world
        self._plan = None

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of ``epoch`` (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    @property
    def num_graphs(self) -> int:
        return int(self.indices.numel())

    @property
    def labels(self) -> torch.Tensor:
        """Labels of the graphs this loader yields (the training loop checks validation has both classes)."""
        return self.split.y[self.indices]

    def order(self) -> torch.Tensor:
        """Graph indices in this epoch's order."""
        if not self.shuffle:
            return self.indices
        rng = np.random.default_rng([self.seed, self.epoch])
        return self.indices[torch.from_numpy(rng.permutation(self.num_graphs))]

    def batches(self) -> list[torch.Tensor]:
        """This rank's index batches of the epoch (all of them unless sharded)."""
        plan = self.global_batches()
        if self.world == 1:
            return plan
        return [plan[pos] for pos, _ in shard_positions(len(plan), self.rank, self.world)]

    def batch_weights(self) -> list[float]:
        """Per batch of ``batches``: 1.0, or 0.0 for padding that only keeps ranks in step."""
        if self.world == 1:
            return [1.0] * len(self.global_batches())
        return [0.0 if pad else 1.0 for _, pad in shard_positions(len(self.global_batches()), self.rank, self.world)]

    def global_batches(self) -> list[torch.Tensor]:
        """This epoch's index batches over all ranks (cached per epoch: ``len`` and iteration agree)."""
        if self._plan is None or self._plan[0] != self.epoch:
            order = self.order()
            if self.max_nodes is None:
                plan = list(torch.split(order, self.batch_size))
            else:
                sizes = self.split.nodes_per_graph()[order]
                plan = list(torch.tensor_split(order, budget_boundaries(sizes, self.max_nodes, self.batch_size)))
            self._plan = (self.epoch, plan)
        return self._plan[1]

    def shrink(self, factor: float) -> int:
        """Lower the node budget by ``factor`` after an out-of-memory step; returns the new budget.

        The floor is the largest single graph: below it no batch can be formed, so reaching it
        raises MemoryError instead of retrying forever.
        """
        largest = int(self.split.nodes_per_graph()[self.indices].max()) if self.num_graphs else 1
        current = self.max_nodes if self.max_nodes is not None else largest * self.batch_size
        if current <= largest:
            raise MemoryError(f"out of memory with a node budget of {current} (one graph of up to {largest} nodes)")
        self.max_nodes = max(int(current * factor), largest)
        return self.max_nodes

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[GraphBatch]:
        for index in self.batches():
            yield self.split.collate(index)


def budget_boundaries(sizes: torch.Tensor, max_nodes: int, max_graphs: int) -> list[int]:
    """Split points of a greedy fill of ``sizes`` into runs of <= max_nodes nodes and <= max_graphs.

    The end of the run starting at every position is found at once with ``searchsorted`` on the
    cumulative sizes; following that chain costs one step per batch, not per graph.
    """
    n = int(sizes.numel())
    if n == 0:
        return []
    csum = torch.cumsum(sizes.long(), 0)
    before = csum - sizes.long()
    by_nodes = torch.searchsorted(csum, before + max_nodes, right=True)
    start = torch.arange(n)
    end = torch.minimum(torch.maximum(by_nodes, start + 1), start + max_graphs).tolist()
    cuts, pos = [], 0
    while True:
        pos = end[pos]
        if pos >= n:
            return cuts
        cuts.append(pos)


VALIDATION_GRAPHS_FACTOR = 4
"""Validation batches take this many times the training graphs: a forward without gradients
keeps no activations for a backward pass."""


def validation_loader(split: GraphSplit, batch_size: int, max_nodes: int | None) -> GraphLoader:
    """Validation batches under the training plan's node cap: without it a batch of 4x the graphs
    could need more memory than the planned training step on a split of larger graphs."""
    return GraphLoader(split, batch_size * VALIDATION_GRAPHS_FACTOR, max_nodes=max_nodes)
