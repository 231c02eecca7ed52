"""GraphSAGE encoder for knowledge graphs: one SAGEConv per message type, summed per destination.

This is the heterogeneous GraphSAGE that ``to_hetero`` would build, written out per type: it
needs no tracing, and a layer runs on any subset of message types, which layer-wise inference
relies on. It is cheaper than HGT (no attention), so it makes a natural distilled student.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch_geometric.nn import SAGEConv

from pipeline.kg.models.base import KGEncoder


class HeteroSAGE(KGEncoder):
    """Learnable embeddings -> ``layers`` x (sum over message types of SAGEConv) -> per-type Linear(out)."""

    def __init__(self, num_nodes: dict[str, int], message_types: list[list[str]], num_edge_types: int,
                 hidden: int = 64, out: int = 128, layers: int = 2, dropout: float = 0.1,
                 align_dim: int | None = None, **extra: Any):
        extra.pop("heads", None)  # accepted for a uniform constructor; SAGE has no heads
        super().__init__(num_nodes, message_types, num_edge_types, hidden=hidden, out=out, layers=layers,
                         dropout=dropout, align_dim=align_dim, **extra)
        self.convs = nn.ModuleList(
            nn.ModuleDict({"__".join(mt): SAGEConv((hidden, hidden), hidden) for mt in self.message_types})
            for _ in range(layers))
        self.norms = nn.ModuleList(nn.ModuleDict({t: nn.LayerNorm(hidden) for t in self.node_types})
                                   for _ in range(layers))

    def layer(self, i: int, x: dict[str, torch.Tensor],
              edge_index: dict[tuple[str, str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
        agg: dict[str, torch.Tensor] = {}
        # Every message type into a present node type contributes, with or without edges here:
        # SAGEConv's root term (lin_r x_dst) does not depend on them, so a node's output must not
        # depend on which other message types a batch or an inference chunk happens to contain.
        for mt in self.message_types:
            src, _, dst = mt
            if dst not in x:
                continue
            x_dst = x[dst]
            x_src = x.get(src, x_dst.new_zeros(0, x_dst.shape[1]))
            ei = edge_index.get(mt)
            if ei is None or x_src.shape[0] == 0:
                ei = torch.zeros(2, 0, dtype=torch.long, device=x_dst.device)
            msg = self.convs[i]["__".join(mt)]((x_src, x_dst), ei, size=(x_src.shape[0], x_dst.shape[0]))
            agg[dst] = agg[dst] + msg if dst in agg else msg
        out = {}
        for t, h in x.items():
            z = h + torch.relu(self.norms[i][t](agg[t])) if t in agg else h
            out[t] = nn.functional.dropout(z, self.dropout, self.training)
        return out
