"""Sampled link batches: seed edges per edge type, negatives, k-hop sampled neighbourhoods.

A batch is built in three steps, all vectorized:

1. **Seeds.** Per edge type, the next ``b_k`` train edges of this epoch's permutation (a function
   of (seed, epoch), so resume replays the same batches) and ``neg_ratio`` negatives per positive,
   corrupting the head or the tail uniformly within its node type.
2. **Neighbourhoods.** The seed nodes of every type plus, hop by hop, up to ``fanouts[h]``
   neighbours per node and message type (``pipeline.kg.neighbors``: the pure-torch sampler or
   PyG's, per ``kg.sampler``).
3. **No answer leak.** The batch's positive edges are removed from its message graph, so the
   model has to predict them instead of reading them off the subgraph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch

from pipeline.distributed import shard_positions
from pipeline.kg.cache import EdgeType, KGGraph
from pipeline.kg.neighbors import PygNeighborSampler, TorchNeighborSampler, make_neighbor_sampler


@dataclass
class LinkTargets:
    """Supervision of one edge type in a batch, as batch-local node indices."""

    edge_type: int
    src_type: str
    dst_type: str
    pos: torch.Tensor
    """int64[2, P]: positive (src, dst) pairs."""
    neg: torch.Tensor
    """int64[2, Q]: negative pairs (training) or empty (evaluation uses ``candidates``)."""
    candidates: torch.Tensor | None = None
    """int64[K]: corrupted tails every positive is ranked against (evaluation only)."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "LinkTargets":
        move = lambda t: t.to(device, non_blocking=non_blocking) if t is not None else None  # noqa: E731
        return LinkTargets(self.edge_type, self.src_type, self.dst_type, move(self.pos), move(self.neg),
                           move(self.candidates))


@dataclass
class KGBatch:
    """A sampled subgraph with its link targets; what the Trainer moves to the device."""

    n_id: dict[str, torch.Tensor]
    """Node type -> ids (local index within the type in the cache) of the batch nodes; seeds first."""
    edge_index: dict[EdgeType, torch.Tensor]
    """Message type -> int64[2, e] batch-local (src, dst); only non-empty types, in metadata order."""
    targets: list[LinkTargets] = field(default_factory=list)
    degree_drop: dict[str, torch.Tensor] = field(default_factory=dict)
    """Node type -> float[n, incoming message types]: the batch's positive edges counted in each
    node's training degree (removed from its message graph, so taken out of the degree too)."""
    hops: dict[str, list[int]] | None = None
    """Node type -> nodes within 0, 1, ... hops of a seed (n_id is ordered by hop): lets a model skip
    what cannot reach a seed's output (PyG's trim_to_layer). None: unknown, nothing is trimmed."""
    num_seeds: dict[str, int] = field(default_factory=dict)
    """Node type -> how many leading rows of n_id are seeds (endpoints of the batch's pairs); every
    node type of the graph is listed. Empty for a batch that is not a link batch."""

    @property
    def num_graphs(self) -> int:
        """Positive seed edges: the Trainer weighs each batch's loss by this count."""
        return int(sum(t.pos.shape[1] for t in self.targets))

    @property
    def num_nodes(self) -> int:
        return int(sum(v.numel() for v in self.n_id.values()))

    @property
    def num_edges(self) -> int:
        return int(sum(v.shape[1] for v in self.edge_index.values()))

    def node_counts(self) -> dict[str, int]:
        return {t: int(v.numel()) for t, v in self.n_id.items()}

    def edge_counts(self) -> dict[str, int]:
        return {"__".join(k): int(v.shape[1]) for k, v in self.edge_index.items()}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "KGBatch":
        return KGBatch({t: v.to(device, non_blocking=non_blocking) for t, v in self.n_id.items()},
                       {k: v.to(device, non_blocking=non_blocking) for k, v in self.edge_index.items()},
                       [t.to(device, non_blocking) for t in self.targets],
                       {t: v.to(device, non_blocking=non_blocking) for t, v in self.degree_drop.items()}, self.hops,
                       self.num_seeds)


# -- assembling batches --------------------------------------------------------------------------------

def assemble(graph: KGGraph, sampler: TorchNeighborSampler | PygNeighborSampler,
             pairs: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]],
             generator: torch.Generator) -> KGBatch:
    """Sample the neighbourhood of the pairs' endpoints and express the pairs in batch indices.

    ``pairs``: per edge type k, (k, positives [2, P], negatives [2, Q], candidate tails [K] or None),
    all as ids within their node types.
    """
    ends: dict[str, list[torch.Tensor]] = {t: [] for t in graph.node_types}
    for k, pos, neg, cand in pairs:
        a, b = graph.edge_types[k]["src_alias"], graph.edge_types[k]["dst_alias"]
        ends[a] += [pos[0], neg[0]]
        ends[b] += [pos[1], neg[1]] + ([cand] if cand is not None else [])
    seeds = {t: torch.unique(torch.cat(v)) for t, v in ends.items() if v and sum(x.numel() for x in v)}
    nodes, edges, hops = sampler.sample(seeds, generator)
    edges = _drop_targets(graph, nodes, edges, pairs)
    local = lambda t, ids: torch.searchsorted(seeds[t], ids)  # noqa: E731  (seeds lead n_id, sorted)
    targets = []
    for k, pos, neg, cand in pairs:
        a, b = graph.edge_types[k]["src_alias"], graph.edge_types[k]["dst_alias"]
        targets.append(LinkTargets(k, a, b, torch.stack([local(a, pos[0]), local(b, pos[1])]),
                                   torch.stack([local(a, neg[0]), local(b, neg[1])]),
                                   local(b, cand) if cand is not None else None))
    ordered = {mt: edges[mt] for mt in graph.message_types if mt in edges and edges[mt].shape[1]}
    return KGBatch(nodes, ordered, targets, _degree_drop(graph, nodes, targets), hops,
                   {t: int(seeds[t].numel()) if t in seeds else 0 for t in graph.node_types})


def _degree_drop(graph: KGGraph, nodes: dict[str, torch.Tensor], targets: list[LinkTargets]) -> dict[str, torch.Tensor]:
    """Per node and incoming message type, how many of the batch's positive edges arrive there."""
    incoming = {t: [mt for mt in graph.message_types if mt[2] == t] for t in graph.node_types}
    drop: dict[str, torch.Tensor] = {}
    for tgt in targets:
        if tgt.pos.numel() == 0:
            continue
        for mt, direction in graph.messages_of(tgt.edge_type):
            column = incoming[mt[2]].index(mt)
            receivers = {"fwd": [tgt.pos[1]], "rev": [tgt.pos[0]], "sym": [tgt.pos[0], tgt.pos[1]]}[direction]
            table = drop.setdefault(mt[2], torch.zeros(nodes[mt[2]].numel(), max(len(incoming[mt[2]]), 1)))
            for local in receivers:
                table.index_put_((local, torch.full_like(local, column)), torch.ones(local.numel()), accumulate=True)
    return drop


def _drop_targets(graph: KGGraph, nodes: dict[str, torch.Tensor], edges: dict[EdgeType, torch.Tensor],
                  pairs: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> dict[EdgeType, torch.Tensor]:
    """Remove the batch's positive edges (in every direction they are carried) from its message graph."""
    for k, pos, _, _ in pairs:
        if pos.numel() == 0:
            continue
        for mt, direction in graph.messages_of(k):
            if mt not in edges:
                continue
            src_t, _, dst_t = mt
            n_dst = graph.num_nodes[dst_t]
            ei = edges[mt]
            key = nodes[src_t][ei[0]] * n_dst + nodes[dst_t][ei[1]]
            fwd, rev = pos[0] * n_dst + pos[1], pos[1] * n_dst + pos[0]
            banned = {"fwd": fwd, "rev": rev, "sym": torch.cat([fwd, rev])}[direction]
            edges[mt] = ei[:, ~torch.isin(key, banned)]
    return edges


def corrupt(pos: torch.Tensor, ratio: int, num_src: int, num_dst: int, generator: torch.Generator) -> torch.Tensor:
    """``ratio`` negatives per positive: each replaces the head or the tail (coin flip) uniformly."""
    rep = pos.repeat(1, ratio)
    n = rep.shape[1]
    head = torch.rand(n, generator=generator) < 0.5
    new_src = torch.randint(0, num_src, (n,), generator=generator)
    new_dst = torch.randint(0, num_dst, (n,), generator=generator)
    return torch.stack([torch.where(head, new_src, rep[0]), torch.where(head, rep[1], new_dst)])


def allocate_seeds(train_counts: dict[int, int], total: int) -> dict[int, int]:
    """Seed edges per edge type, proportional to its train edges (at least 1, at most all of them)."""
    n_all = max(sum(train_counts.values()), 1)
    return {k: max(1, min(n, round(total * n / n_all))) for k, n in train_counts.items() if n > 0}


# -- loaders ----------------------------------------------------------------------------------------------

class LinkBatchLoader:
    """The train loader: ``len`` steps per epoch of sampled link batches, reproducible per (seed, epoch).

    ``max_nodes`` is the Trainer's generic name for the batch budget; here it is the number of
    seed (positive) edges per step, split over edge types in proportion to their train edges.
    ``shrink`` halves it after an out-of-memory step.

    Each step draws from a generator of its own (seed, epoch, step), so data-parallel ranks
    (``shard``) build only their own steps, r, r + W, ..., exactly as one process builds them.
    """

    def __init__(self, graph: KGGraph, seed_edges: int, fanouts: list[int], neg_ratio: int = 1, seed: int = 0,
                 steps_per_epoch: int | None = None, sampler: Literal["auto", "torch", "pyg"] = "auto"):
        self.graph = graph
        self.fanouts = list(fanouts)
        self.neg_ratio = neg_ratio
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.sampler = make_neighbor_sampler(graph, fanouts, sampler)
        self.train = {k: graph.edges(k, "train") for k in range(len(graph.edge_types))}
        self.train_counts = {k: int(e.shape[1]) for k, e in self.train.items()}
        self._budget = max(1, seed_edges)
        self.rank, self.world = 0, 1

    # -- budget -----------------------------------------------------------
    @property
    def max_nodes(self) -> int:
        return self._budget

    @max_nodes.setter
    def max_nodes(self, value: int) -> None:
        self._budget = max(1, int(value))

    @property
    def seeds_per_type(self) -> dict[int, int]:
        return allocate_seeds(self.train_counts, self._budget)

    def shrink(self, factor: float) -> int:
        if self._budget <= 1:
            raise MemoryError("a batch of one seed edge does not fit")
        self._budget = max(1, int(self._budget * factor))
        return self._budget

    # -- iteration ----------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world: int) -> None:
        """Build only rank ``rank``'s steps of each epoch (see ``pipeline.distributed.shard_positions``)."""
        shard_positions(0, rank, world)  # validates rank and world
        self.rank, self.world = rank, world

    def global_steps(self) -> int:
        """Steps of an epoch over all ranks: what one process takes."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        per = self.seeds_per_type
        return max((math.ceil(self.train_counts[k] / b) for k, b in per.items()), default=0)

    def __len__(self) -> int:
        return len(shard_positions(self.global_steps(), self.rank, self.world))

    def batch_weights(self) -> list[float]:
        """Per step of this rank: 1.0, or 0.0 for a padding step that only keeps the ranks in step."""
        return [0.0 if pad else 1.0 for _, pad in shard_positions(self.global_steps(), self.rank, self.world)]

    def _generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 7 + salt)

    def __iter__(self) -> Iterator[KGBatch]:
        steps, per = self.global_steps(), self.seeds_per_type
        gen = self._generator()
        order = {k: _epoch_order(self.train_counts[k], steps * b, gen) for k, b in per.items()}
        for step, _ in shard_positions(steps, self.rank, self.world):
            step_gen = self._generator(salt=1_000_003 * (step + 1))
            yield self.batch({k: order[k][step * b:(step + 1) * b] for k, b in per.items()}, step_gen)

    def batch(self, picks: dict[int, torch.Tensor], generator: torch.Generator) -> KGBatch:
        """The batch of the given train-edge positions per edge type (also used by memory probes)."""
        pairs = []
        for k, idx in picks.items():
            e = self.graph.edge_types[k]
            pos = self.train[k][:, idx]
            neg = corrupt(pos, self.neg_ratio, self.graph.num_nodes[e["src_alias"]],
                          self.graph.num_nodes[e["dst_alias"]], generator)
            pairs.append((k, pos, neg, None))
        return assemble(self.graph, self.sampler, pairs, generator)

    def random_batch(self, seeds_per_type: dict[int, int], generator: torch.Generator) -> KGBatch:
        return self.batch({k: torch.randint(0, self.train_counts[k], (b,), generator=generator)
                           for k, b in seeds_per_type.items() if self.train_counts.get(k)}, generator)


def _epoch_order(n: int, needed: int, generator: torch.Generator) -> torch.Tensor:
    """``needed`` positions in 0..n-1: whole random permutations, repeated while more are needed."""
    reps = max(1, math.ceil(needed / max(n, 1)))
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:needed]


class LinkEvalLoader:
    """Held-out edges (val or test) in sampled batches, each ranked against shared corrupted tails.

    The same batches every time (fixed generator), so validation scores are comparable across
    epochs. Neighbourhoods come from the training graph, which never contains held-out edges.
    """

    def __init__(self, graph: KGGraph, split: str, fanouts: list[int], batch_edges: int = 512,
                 max_per_type: int | None = 500, negatives: int = 100, seed: int = 0,
                 sampler: Literal["auto", "torch", "pyg"] = "auto"):
        self.graph = graph
        self.batch_edges = batch_edges
        self.negatives = negatives
        self.seed = seed
        self.sampler = make_neighbor_sampler(graph, fanouts, sampler)
        gen = torch.Generator().manual_seed(seed)
        self.edges: dict[int, torch.Tensor] = {}
        for k in range(len(graph.edge_types)):
            e = graph.edges(k, split)
            if e.shape[1] == 0:
                continue
            if max_per_type is not None and e.shape[1] > max_per_type:
                e = e[:, torch.randperm(e.shape[1], generator=gen)[:max_per_type]]
            self.edges[k] = e

    def __len__(self) -> int:
        return sum(math.ceil(e.shape[1] / self.batch_edges) for e in self.edges.values())

    def __iter__(self) -> Iterator[KGBatch]:
        gen = torch.Generator().manual_seed(self.seed + 1)
        for k, e in self.edges.items():
            num_dst = self.graph.num_nodes[self.graph.edge_types[k]["dst_alias"]]
            for start in range(0, e.shape[1], self.batch_edges):
                pos = e[:, start:start + self.batch_edges]
                cand = torch.randint(0, num_dst, (self.negatives,), generator=gen)
                yield assemble(self.graph, self.sampler, [(k, pos, pos[:, :0], cand)], gen)
