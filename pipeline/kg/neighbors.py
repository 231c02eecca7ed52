"""k-hop heterogeneous neighbour sampling for link batches: a pure-torch sampler and PyG's.

Given the seed nodes of every type, a sampler adds, hop by hop, up to ``fanouts[h]`` neighbours per
node and message type, drawn from the CSC adjacency of the training graph; new nodes get
consecutive local indices (a dense "global -> local" buffer per type, reset after each batch, makes
the remap O(batch)). Both samplers return the same three things: node ids per type (seeds first,
then by hop), batch-local edges per message type, and the node count within each hop (or None).

PyG's ``NeighborSampler`` does this in C++ but needs pyg-lib or torch-sparse; ``sampler: auto``
uses it when one of them is importable and the pure-torch sampler otherwise. Neighbours of a node
with more than ``fanout`` of them are drawn with replacement and deduplicated (a hub may get a few
fewer than ``fanout`` distinct ones); fewer are all taken.
"""
from __future__ import annotations

from typing import Literal

import torch

from pipeline.kg.cache import EdgeType, KGGraph


class TorchNeighborSampler:
    """k-hop heterogeneous neighbour sampling in pure torch over the cache's CSC arrays."""

    def __init__(self, graph: KGGraph, fanouts: list[int]):
        self.graph = graph
        self.fanouts = list(fanouts)
        self._assoc = {t: torch.full((n,), -1, dtype=torch.long) for t, n in graph.num_nodes.items()}

    def sample(self, seeds: dict[str, torch.Tensor], generator: torch.Generator
               ) -> tuple[dict[str, torch.Tensor], dict[EdgeType, torch.Tensor], dict[str, list[int]]]:
        """``seeds``: unique ids per node type. Returns n_id per type (seeds first, then by hop),
        edges per message type, and the node count within each hop per type."""
        n_id: dict[str, list[torch.Tensor]] = {t: [] for t in self.graph.node_types}
        count = {t: 0 for t in self.graph.node_types}
        frontier: dict[str, torch.Tensor] = {}
        for t, ids in seeds.items():
            self._add(t, ids, n_id, count)
            frontier[t] = ids
        hops = {t: [count[t]] for t in self.graph.node_types}
        parts: dict[EdgeType, list[torch.Tensor]] = {mt: [] for mt in self.graph.message_types}
        try:
            for fanout in self.fanouts:
                grown: dict[str, list[torch.Tensor]] = {t: [] for t in self.graph.node_types}
                for mt in self.graph.message_types:
                    src_t, _, dst_t = mt
                    dst = frontier.get(dst_t)
                    if dst is None or dst.numel() == 0:
                        continue
                    src_g, owner = _sample_incoming(*self.graph.csc[mt], dst, fanout, generator)
                    if src_g.numel() == 0:
                        continue
                    new = torch.unique(src_g[self._assoc[src_t][src_g] < 0])
                    if new.numel():
                        self._add(src_t, new, n_id, count)
                        grown[src_t].append(new)
                    parts[mt].append(torch.stack([self._assoc[src_t][src_g], self._assoc[dst_t][dst[owner]]]))
                frontier = {t: torch.cat(v) for t, v in grown.items() if v}
                for t in hops:
                    hops[t].append(count[t])
            nodes = {t: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for t, v in n_id.items()}
        finally:
            for t, v in n_id.items():
                for ids in v:
                    self._assoc[t][ids] = -1
        edges = {}
        for mt, chunks in parts.items():
            if chunks:
                ei = torch.cat(chunks, dim=1)
                edges[mt] = _unique_pairs(ei, nodes[mt[2]].numel())
        return nodes, edges, hops

    def _add(self, t: str, ids: torch.Tensor, n_id: dict[str, list[torch.Tensor]], count: dict[str, int]) -> None:
        self._assoc[t][ids] = torch.arange(count[t], count[t] + ids.numel())
        count[t] += ids.numel()
        n_id[t].append(ids)


def _sample_incoming(ptr: torch.Tensor, col: torch.Tensor, dst: torch.Tensor, fanout: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``fanout`` incoming neighbours of each ``dst`` node: (their ids, the dst position each serves)."""
    start = ptr[dst]
    deg = ptr[dst + 1] - start
    cnt = deg.clamp(max=fanout)
    total = int(cnt.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(dst.numel()), cnt)
    offset = torch.arange(total) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
    deg_o = deg[owner]
    drawn = (torch.rand(total, generator=generator, dtype=torch.float64) * deg_o).long()
    pos = torch.where(deg_o <= fanout, offset, drawn)
    return col[start[owner] + pos], owner


def _unique_pairs(edge_index: torch.Tensor, num_dst: int) -> torch.Tensor:
    key = torch.unique(edge_index[0] * max(num_dst, 1) + edge_index[1])
    return torch.stack([key // max(num_dst, 1), key % max(num_dst, 1)])


class PygNeighborSampler:
    """The same interface on top of PyG's ``NeighborSampler`` (pyg-lib / torch-sparse kernels).

    PyG draws from its own random stream, so batches are reproducible only as far as those
    kernels are; the pure-torch sampler is exactly reproducible per (seed, epoch).
    """

    def __init__(self, graph: KGGraph, fanouts: list[int]):
        from torch_geometric.data import HeteroData
        from torch_geometric.sampler import NeighborSampler

        data = HeteroData()
        for t, n in graph.num_nodes.items():
            data[t].num_nodes = n
        for mt, (ptr, col) in graph.csc.items():
            dst = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())
            data[mt].edge_index = torch.stack([col.clone(), dst])
        self.graph = graph
        self.sampler = NeighborSampler(data, num_neighbors={mt: list(fanouts) for mt in graph.message_types})

    def sample(self, seeds: dict[str, torch.Tensor], generator: torch.Generator
               ) -> tuple[dict[str, torch.Tensor], dict[EdgeType, torch.Tensor], dict[str, list[int]] | None]:
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        out = self.sampler._sample(seeds)
        empty = torch.zeros(0, dtype=torch.long)
        nodes = {t: out.node.get(t, empty) for t in self.graph.node_types}
        edges = {mt: torch.stack([out.row[mt], out.col[mt]]) for mt in self.graph.message_types
                 if mt in out.row and out.row[mt].numel()}
        hops = None
        if out.num_sampled_nodes is not None:  # pyg-lib reports nodes per hop; torch-sparse does not
            hops = {t: [int(c) for c in torch.tensor(out.num_sampled_nodes.get(t, [0])).cumsum(0).tolist()]
                    for t in self.graph.node_types}
        return nodes, edges, hops


def pyg_sampling_available() -> bool:
    import torch_geometric.typing as pyg_typing

    return bool(pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE)


def make_neighbor_sampler(graph: KGGraph, fanouts: list[int], kind: Literal["auto", "torch", "pyg"] = "auto"
                          ) -> TorchNeighborSampler | PygNeighborSampler:
    """PyG's sampler when its kernels are importable (``auto``) or demanded (``pyg``), else pure torch."""
    if kind == "pyg" and not pyg_sampling_available():
        raise ImportError("kg.sampler=pyg needs pyg-lib or torch-sparse, and neither is importable; "
                          "set kg.sampler=auto or torch to use the pure-torch sampler")
    if kind == "pyg" or (kind == "auto" and pyg_sampling_available()):
        return PygNeighborSampler(graph, fanouts)
    return TorchNeighborSampler(graph, fanouts)
