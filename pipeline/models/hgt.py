"""HGT (Heterogeneous Graph Transformer) encoder for knowledge graphs.

Node and message types each get their own attention projections, which suits PrimeKG-style
graphs where a protein-protein edge and a drug-protein edge mean different things. Defaults
follow the workload: 256 hidden, 8 heads, 2 layers, a 512-d output head.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch_geometric.nn import HGTConv
from torch_geometric.nn.dense.linear import HeteroLinear

from pipeline.models.kg_base import KGEncoder, keep_missing


class SegmentLinear(nn.Module):
    """HGTConv's per-(head, message type) projection, one matmul per non-empty segment, concatenated.

    Without pyg-lib, PyG's ``HeteroLinear`` writes each segment into a preallocated output; the
    backward of those slice writes materializes a full-size gradient per type, which is
    quadratic in the number of types (heads x message types: 224 on an 8-type PrimeKG slice,
    seconds per step). Same parameter (and state-dict key), same result, linear cost.
    """

    def __init__(self, lin: HeteroLinear):
        super().__init__()
        self.weight = lin.weight
        self.num_types = lin.num_types

    def forward(self, x: torch.Tensor, type_vec: torch.Tensor) -> torch.Tensor:
        perm = None
        if type_vec.numel() > 1 and bool((type_vec[1:] < type_vec[:-1]).any()):
            type_vec, perm = torch.sort(type_vec, stable=True)
            x = x[perm]
        counts = torch.bincount(type_vec, minlength=self.num_types).tolist()
        # split/unbind (not slicing/indexing): their backward is one cat/stack, not a zero tensor per piece
        weights = self.weight.unbind(0)
        parts = [xs @ weights[i] for i, xs in enumerate(torch.split(x, counts)) if xs.shape[0]]
        out = torch.cat(parts) if parts else x.new_zeros(0, self.weight.shape[-1])
        if perm is not None:
            out = torch.empty_like(out).index_copy(0, perm, out)
        return out


class HGT(KGEncoder):
    """Learnable embeddings -> ``layers`` x HGTConv(hidden, heads) -> per-type Linear(out)."""

    def __init__(self, num_nodes: dict[str, int], message_types: list[list[str]], num_edge_types: int,
                 hidden: int = 256, out: int = 512, heads: int = 8, layers: int = 2, dropout: float = 0.1,
                 align_dim: int | None = None, **extra: Any):
        if hidden % heads:
            raise ValueError(f"HGT: hidden ({hidden}) must be divisible by heads ({heads})")
        super().__init__(num_nodes, message_types, num_edge_types, hidden=hidden, out=out, layers=layers,
                         dropout=dropout, align_dim=align_dim, heads=heads, **extra)
        metadata = (self.node_types, self.message_types)
        self.convs = nn.ModuleList(HGTConv(hidden, hidden, metadata, heads=heads) for _ in range(layers))
        for conv in self.convs:
            conv.k_rel = SegmentLinear(conv.k_rel)
            conv.v_rel = SegmentLinear(conv.v_rel)

    def layer(self, i: int, x: dict[str, torch.Tensor],
              edge_index: dict[tuple[str, str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
        edges = self._ordered(edge_index)
        out = keep_missing(self.convs[i](x, edges) if edges else {}, x)
        return {t: nn.functional.dropout(h, self.dropout, self.training) for t, h in out.items()}
