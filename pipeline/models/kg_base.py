"""What the knowledge-graph encoders (HGT, GraphSAGE) share: learnable node embeddings, a per-type
output head, a DistMult link scorer, and a layer-by-layer interface.

The graphs have no node features, so every node starts from a learnable embedding of its id
within its type. ``forward`` runs all layers on a sampled batch; ``layer`` runs one layer on any
subgraph, which is what layer-wise inference uses to embed every node chunk by chunk without a
full-graph forward pass.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

EMBED_STD = 1.0
"""Init scale of the node embeddings (nn.Embedding's default). Much smaller and the per-type
biases of the layers dominate: nodes of one type start out nearly identical (cosine ~0.99)."""


class KGEncoder(nn.Module):
    """Base class: subclasses build ``self.convs`` and implement :meth:`layer`.

    Constructor arguments are plain data (node counts per type alias, message types as lists)
    kept in ``model_kwargs``, so a checkpoint rebuilds the model without the cache or profile.
    """

    def __init__(self, num_nodes: dict[str, int], message_types: list[list[str]], num_edge_types: int,
                 hidden: int = 256, out: int = 512, layers: int = 2, dropout: float = 0.1,
                 align_dim: int | None = None, **extra: Any):
        super().__init__()
        self.model_kwargs: dict[str, Any] = dict(
            num_nodes=dict(num_nodes), message_types=[list(m) for m in message_types],
            num_edge_types=num_edge_types, hidden=hidden, out=out, layers=layers, dropout=dropout,
            align_dim=align_dim, **extra)
        self.node_types = list(num_nodes)
        self.message_types = [tuple(m) for m in message_types]
        self.num_layers = layers
        self.hidden = hidden
        self.out_dim = out
        self.dropout = dropout
        self.embed = nn.ModuleDict({t: nn.Embedding(n, hidden) for t, n in num_nodes.items()})
        for table in self.embed.values():
            nn.init.normal_(table.weight, std=EMBED_STD)
        self.head = nn.ModuleDict({t: nn.Linear(hidden, out) for t in num_nodes})
        self.rel = nn.Parameter(torch.ones(num_edge_types, out))
        """Diagonal DistMult relation of each (undirected) edge type."""
        self.align = nn.Linear(out, align_dim) if align_dim else None
        """Projection onto the teacher's embedding width, used only by the distillation loss."""

    # -- layer-by-layer interface ------------------------------------------------
    def inputs(self, n_id: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self.embed[t](ids) for t, ids in n_id.items() if ids.numel()}

    def layer(self, i: int, x: dict[str, torch.Tensor],
              edge_index: dict[tuple[str, str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Layer ``i`` on a (sub)graph: every node type of ``x`` gets an output row per input row."""
        raise NotImplementedError

    def output(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self.head[t](h) for t, h in x.items()}

    def forward(self, batch) -> dict[str, torch.Tensor]:
        x = self.inputs(batch.n_id)
        edges = {k: v for k, v in batch.edge_index.items() if k[0] in x and k[2] in x}
        for i in range(self.num_layers):
            x = self.layer(i, x, edges)
        return self.output(x)

    # -- scoring -------------------------------------------------------------------
    def score(self, edge_type: int, h_src: torch.Tensor, h_dst: torch.Tensor) -> torch.Tensor:
        """DistMult logit of (src, edge type, dst), scaled by 1/sqrt(width) to start unsaturated."""
        return (h_src * self.rel[edge_type] * h_dst).sum(-1) / math.sqrt(h_src.shape[-1])

    def _ordered(self, edge_index: dict) -> dict:
        """Message types in metadata order, non-empty only (HGTConv relies on the order)."""
        return {mt: edge_index[mt] for mt in self.message_types if mt in edge_index and edge_index[mt].numel()}


def keep_missing(out: dict[str, torch.Tensor | None], x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Node types that received no message keep their input (convs drop or None them)."""
    return {t: out[t] if out.get(t) is not None else h for t, h in x.items()}
