"""GAT graph classifier with jumping knowledge: the CAN teacher, and (with smaller dims) its students.

Every window graph is a handful of CAN ids linked by message order. An id's identity matters as
much as its timing statistics, so nodes start from a learned embedding of the vocabulary index
concatenated with the continuous features. Jumping knowledge keeps each layer's view (one hop,
two hops, ...) because short-range anomalies such as injected ids are visible in the first layer
and would otherwise be smoothed away by the later ones.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.nn import GATConv, JumpingKnowledge, global_max_pool, global_mean_pool

from pipeline.can.data.cache import GraphBatch


class GATWithJK(nn.Module):
    """ids + features -> input projection -> ``layers`` x GATConv -> JK('cat') -> mean|max pool -> MLP.

    Constructor arguments are plain numbers and are kept in ``model_kwargs`` so that a checkpoint
    can rebuild the model without the profile that made it.
    """

    def __init__(
        self,
        num_ids: int,
        node_features: int,
        edge_features: int,
        hidden: int = 32,
        heads: int = 4,
        layers: int = 3,
        id_embed_dim: int = 16,
        mlp_hidden: int = 64,
        dropout: float = 0.1,
        num_classes: int = 2,
    ):
        super().__init__()
        if num_ids < 1:
            raise ValueError(f"num_ids must be >= 1 (vocabulary size + 1), got {num_ids}")
        self.model_kwargs: dict[str, Any] = dict(
            num_ids=num_ids, node_features=node_features, edge_features=edge_features, hidden=hidden,
            heads=heads, layers=layers, id_embed_dim=id_embed_dim, mlp_hidden=mlp_hidden,
            dropout=dropout, num_classes=num_classes,
        )
        width = hidden * heads
        self.dropout = dropout
        self.id_embed = nn.Embedding(num_ids, id_embed_dim)
        self.input = nn.Linear(id_embed_dim + node_features, width)
        self.convs = nn.ModuleList(
            GATConv(width, hidden, heads=heads, concat=True, dropout=dropout,
                    edge_dim=edge_features if edge_features > 0 else None)
            for _ in range(layers)
        )
        self.gradient_checkpointing = False
        """Recompute each message-passing layer in backward instead of keeping its activations
        (set by the memory planner when a batch would otherwise be too small)."""
        self.jk = JumpingKnowledge("cat")
        self.embedding_dim = 2 * width * layers
        """Width of ``embed``: mean and max pooling of the concatenated layer outputs."""
        self.head = nn.Sequential(
            nn.Linear(self.embedding_dim, mlp_hidden),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden, num_classes),
        )

    def node_states(self, batch: GraphBatch) -> torch.Tensor:
        """Per-node JK representation [N, hidden * heads * layers]."""
        h = torch.cat([self.id_embed(batch.node_id), batch.x], dim=-1)
        h = nn.functional.elu(self.input(h))
        edge_attr = batch.edge_attr if self.model_kwargs["edge_features"] > 0 else None
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        per_layer = []
        for conv in self.convs:
            if recompute:
                h = checkpoint(self._layer, conv, h, batch.edge_index, edge_attr, use_reentrant=False)
            else:
                h = self._layer(conv, h, batch.edge_index, edge_attr)
            per_layer.append(h)
        return self.jk(per_layer)

    def _layer(self, conv: GATConv, h: torch.Tensor, edge_index: torch.Tensor,
               edge_attr: torch.Tensor | None) -> torch.Tensor:
        h = nn.functional.dropout(h, p=self.dropout, training=self.training)
        return nn.functional.elu(conv(h, edge_index, edge_attr))

    def embed(self, batch: GraphBatch) -> torch.Tensor:
        """Pooled graph embedding [G, embedding_dim]; what later stages export and distil on."""
        h = self.node_states(batch)
        size = batch.num_graphs
        return torch.cat([global_mean_pool(h, batch.batch, size), global_max_pool(h, batch.batch, size)], dim=-1)

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        """Class logits [G, num_classes]."""
        return self.head(self.embed(batch))


