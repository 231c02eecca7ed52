"""Layer-wise inference: the embedding of every node, one layer at a time over chunks of nodes.

Sampled training never sees whole neighbourhoods; inference must, but a full-graph forward
would hold a per-edge tensor for every edge of the graph (PrimeKG: 8M) at once. Instead, for
layer ``i`` and node type ``t``, destination nodes are cut into chunks of at most
``chunk_nodes`` nodes and ``chunk_edges`` incoming edges (a node with more incoming edges than
that is a chunk of its own); a chunk's incoming edges are contiguous slices of the CSC arrays
(no copy of the edge list), its source rows are gathered from the previous layer's table, and the
model's own ``layer`` runs on that small bipartite graph. Tables of one layer live on the host
(``N x hidden`` per layer, two at a time, or all of them for a jumping-knowledge head); only
chunks visit the device. This is PyG's
``BasicGNN.inference`` recipe, for heterogeneous graphs.

A model that reads training labels as input (``kg.label_input``) must not read a node's own:
:func:`embed_nodes` splits the nodes into ``LABEL_GROUPS`` random groups and runs one full
inference per group with that group's labels hidden, keeping each node's row from its group's
pass. Every node then reads about (G-1)/G of its neighbours' labels, training-fold and test-fold
nodes alike, so a classifier fitted on one fold meets the same kind of embedding on the other.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pipeline.kg.cache import EdgeType, KGGraph


def chunk_bounds(in_degree: torch.Tensor, chunk_nodes: int, chunk_edges: int) -> list[tuple[int, int]]:
    """Consecutive [lo, hi) ranges of at most ``chunk_nodes`` nodes and ``chunk_edges`` edges (>= 1 node)."""
    n = int(in_degree.numel())
    cum = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(in_degree.long(), 0)])
    bounds, lo = [], 0
    while lo < n:
        by_edges = int(torch.searchsorted(cum, cum[lo] + chunk_edges, right=True)) - 1
        hi = max(lo + 1, min(lo + chunk_nodes, by_edges, n))
        bounds.append((lo, hi))
        lo = hi
    return bounds


LABEL_GROUPS = 5
"""Inference passes of a label-input model: each hides the input labels of one random fifth of the nodes."""


def embed_nodes(model: torch.nn.Module, graph: KGGraph, chunk_nodes: int = 4096, chunk_edges: int = 262_144,
                device: torch.device | str = "cpu", progress: Callable[[str], None] | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Every node's embedding on ``graph``, none of them reading its own input label (see the module
    docstring): one layer-wise pass, or ``LABEL_GROUPS`` for a label-input model."""
    types = getattr(model, "label_input_types", [])
    if not types:
        return layerwise_embeddings(model, graph, chunk_nodes, chunk_edges, device, progress)
    gen = torch.Generator().manual_seed(seed)
    group = {t: torch.randint(0, LABEL_GROUPS, (n,), generator=gen) for t, n in graph.num_nodes.items()}
    out: dict[str, np.ndarray] = {}
    for k in range(LABEL_GROUPS):
        if progress:
            progress(f"pass {k + 1}/{LABEL_GROUPS}: input labels of group {k + 1} hidden")
        emb = layerwise_embeddings(model, graph, chunk_nodes, chunk_edges, device, progress,
                                   hide_labels={t: group[t] == k for t in types})
        for t, x in emb.items():
            rows = (group[t] == k).numpy()
            out.setdefault(t, np.empty_like(x))[rows] = x[rows]
    return out


@torch.no_grad()
def layerwise_embeddings(model: torch.nn.Module, graph: KGGraph, chunk_nodes: int = 4096,
                         chunk_edges: int = 262_144, device: torch.device | str = "cpu",
                         progress: Callable[[str], None] | None = None,
                         hide_labels: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """float32[N_t, out] per node type (alias) for every node of the graph's training adjacency.
    ``hide_labels[t]``: bool per node of a label-input type, whose input label is hidden."""
    device = torch.device(device)
    model = model.to(device).eval()

    def inputs(t: str, lo: int, hi: int) -> torch.Tensor:
        ids = torch.arange(lo, hi, device=device)
        hide = {t: hide_labels[t][lo:hi].to(device)} if hide_labels and t in hide_labels else None
        return model.inputs({t: ids}, hide_labels=hide)[t].float().cpu()

    x = {t: torch.cat([inputs(t, lo, min(lo + chunk_nodes, n)) for lo in range(0, n, chunk_nodes)])
         for t, n in graph.num_nodes.items()}
    keep_all = getattr(model, "jk", "last") == "cat"
    xs = [x]
    for i in range(model.num_layers):
        x = {t: _layer_for_type(model, i, graph, x, t, chunk_nodes, chunk_edges, device) for t in graph.node_types}
        xs = xs + [x] if keep_all else [x]
        if progress:
            progress(f"layer {i + 1}/{model.num_layers} done")
    out = {}
    for t, n in graph.num_nodes.items():
        rows = [model.output([{t: h[t][lo:lo + chunk_nodes].to(device)} for h in xs])[t].float().cpu()
                for lo in range(0, n, chunk_nodes)]
        out[t] = torch.cat(rows).numpy()
    return out


def _layer_for_type(model: torch.nn.Module, i: int, graph: KGGraph, x: dict[str, torch.Tensor], t: str,
                    chunk_nodes: int, chunk_edges: int, device: torch.device) -> torch.Tensor:
    """Layer ``i`` outputs of every node of type ``t``, chunk by chunk."""
    incoming = [mt for mt in graph.message_types if mt[2] == t]
    n = graph.num_nodes[t]
    degree = torch.zeros(n, dtype=torch.long)
    for mt in incoming:
        degree += graph.csc[mt][0].diff()
    result = torch.empty(n, x[t].shape[1])
    for lo, hi in chunk_bounds(degree, chunk_nodes, chunk_edges):
        ids, edges = chunk_subgraph(graph, incoming, t, lo, hi)
        x_in = {s: x[s][v].to(device) for s, v in ids.items()}
        out = model.layer(i, x_in, {mt: e.to(device) for mt, e in edges.items()})
        result[lo:hi] = out[t][:hi - lo].float().cpu()
    return result


def chunk_subgraph(graph: KGGraph, incoming: list[EdgeType], t: str, lo: int, hi: int
                   ) -> tuple[dict[str, torch.Tensor], dict[EdgeType, torch.Tensor]]:
    """Nodes (ids per type; type ``t`` starts with lo..hi-1) and local edges into the chunk lo..hi-1."""
    pieces: list[tuple[EdgeType, torch.Tensor, torch.Tensor]] = []
    sources: dict[str, list[torch.Tensor]] = {}
    for mt in incoming:
        ptr, col = graph.csc[mt]
        seg = ptr[lo:hi + 1]
        src = col[int(seg[0]):int(seg[-1])]
        dst = torch.repeat_interleave(torch.arange(hi - lo), seg.diff())
        pieces.append((mt, src, dst))
        sources.setdefault(mt[0], []).append(src)
    chunk = torch.arange(lo, hi)
    ids: dict[str, torch.Tensor] = {t: chunk}
    outside: torch.Tensor | None = None
    for s, parts in sources.items():
        allsrc = torch.cat(parts)
        if s == t:
            outside = torch.unique(allsrc[(allsrc < lo) | (allsrc >= hi)])
            ids[t] = torch.cat([chunk, outside])
        else:
            ids[s] = torch.unique(allsrc)
    edges = {}
    for mt, src, dst in pieces:
        s = mt[0]
        if s == t:
            inside = (src >= lo) & (src < hi)
            local = torch.where(inside, src - lo, (hi - lo) + torch.searchsorted(outside, src))
        else:
            local = torch.searchsorted(ids[s], src)
        edges[mt] = torch.stack([local, dst])
    return ids, edges
