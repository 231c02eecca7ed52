"""Variational graph autoencoder over window graphs: the unsupervised teacher and anomaly scorer.

Trained on attack-free windows only, it learns what normal traffic looks like; a window it
reconstructs badly is suspicious, so the per-graph reconstruction error is an anomaly score (and,
for the curriculum, a difficulty score). Three decoders read each node's latent:

* node features (MSE): timing and payload statistics of the id;
* the CAN id itself (cross-entropy over the vocabulary): an injected or foreign id is hard to
  place. The output layer is tied to the input embedding, so it adds no vocabulary-sized weights;
* neighbourhood structure (BCE of an inner-product decoder): every edge, plus ``pair_probes``
  node pairs per node taken deterministically (the next nodes of the same graph in index order),
  labelled by whether an edge joins them. Deterministic pairs keep a graph's score independent
  of the batch it is scored in, and their number grows with nodes, so memory stays linear in
  nodes and edges as the batch planner assumes.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch_geometric.nn import GATConv
from torch_geometric.utils import scatter

from pipeline.can.data.cache import GraphBatch

LOGSTD_MAX = 10.0
"""Clamp of the log standard deviation: exp(2 * 10) is already far beyond any useful variance."""


class VGAEOutput(NamedTuple):
    mu: torch.Tensor
    """Latent means [N, latent_dim]."""
    logstd: torch.Tensor
    z: torch.Tensor
    """Sampled latents in training, the means in eval mode."""
    x_hat: torch.Tensor
    """Reconstructed node features [N, F]."""
    id_logits: torch.Tensor
    """Scores of every vocabulary entry per node [N, num_ids]."""
    pair_logits: torch.Tensor
    """Inner products of the probed pairs [P]."""
    pair_labels: torch.Tensor
    """1 where an edge joins the pair [P]."""
    pair_graph: torch.Tensor
    """Graph of each probed pair [P]."""


class GraphErrors(NamedTuple):
    """Per-graph reconstruction errors [G] (weighted sum = anomaly score)."""

    feature: torch.Tensor
    id: torch.Tensor
    structure: torch.Tensor


class VGAE(nn.Module):
    """ids + features -> input projection -> ``layers`` x GATConv -> (mu, logstd) -> three decoders.

    Constructor arguments are plain numbers kept in ``model_kwargs`` so a checkpoint rebuilds the
    model without the profile. ``project_to`` adds a linear map of the latent into another width
    (the teacher's), which distillation uses to compare latents of different sizes.
    """

    def __init__(
        self,
        num_ids: int,
        node_features: int,
        edge_features: int,
        hidden: int = 32,
        heads: int = 4,
        layers: int = 2,
        latent_dim: int = 16,
        id_embed_dim: int = 16,
        dropout: float = 0.1,
        kl_weight: float = 0.1,
        feature_weight: float = 1.0,
        id_weight: float = 1.0,
        structure_weight: float = 1.0,
        pair_probes: int = 8,
        project_to: int | None = None,
    ):
        super().__init__()
        if num_ids < 1:
            raise ValueError(f"num_ids must be >= 1 (vocabulary size + 1), got {num_ids}")
        self.model_kwargs: dict[str, Any] = dict(
            num_ids=num_ids, node_features=node_features, edge_features=edge_features, hidden=hidden, heads=heads,
            layers=layers, latent_dim=latent_dim, id_embed_dim=id_embed_dim, dropout=dropout, kl_weight=kl_weight,
            feature_weight=feature_weight, id_weight=id_weight, structure_weight=structure_weight,
            pair_probes=pair_probes, project_to=project_to,
        )
        width = hidden * heads
        self.dropout = dropout
        self.latent_dim = latent_dim
        self.id_embed = nn.Embedding(num_ids, id_embed_dim)
        self.input = nn.Linear(id_embed_dim + node_features, width)
        self.convs = nn.ModuleList(
            GATConv(width, hidden, heads=heads, concat=True, dropout=dropout,
                    edge_dim=edge_features if edge_features > 0 else None)
            for _ in range(layers)
        )
        self.mu = nn.Linear(width, latent_dim)
        self.logstd = nn.Linear(width, latent_dim)
        self.feature_decoder = nn.Sequential(nn.Linear(latent_dim, width), nn.ELU(), nn.Linear(width, node_features))
        self.id_decoder = nn.Linear(latent_dim, id_embed_dim)
        """Latent -> embedding space; logits are its dot products with the (tied) id embeddings."""
        self.latent_proj = nn.Linear(latent_dim, project_to) if project_to else None

    # -- encoder -----------------------------------------------------------------
    def encode(self, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-node latent mean and log-std."""
        h = torch.cat([self.id_embed(batch.node_id), batch.x], dim=-1)
        h = nn.functional.elu(self.input(h))
        edge_attr = batch.edge_attr if self.model_kwargs["edge_features"] > 0 else None
        for conv in self.convs:
            h = nn.functional.dropout(h, p=self.dropout, training=self.training)
            h = nn.functional.elu(conv(h, batch.edge_index, edge_attr))
        return self.mu(h), self.logstd(h).clamp(max=LOGSTD_MAX)

    # -- decoders ----------------------------------------------------------------
    def forward(self, batch: GraphBatch) -> VGAEOutput:
        mu, logstd = self.encode(batch)
        z = mu + torch.randn_like(mu) * logstd.exp() if self.training else mu
        x_hat = self.feature_decoder(z)
        id_logits = self.id_decoder(z) @ self.id_embed.weight.t()
        src, dst, labels = probe_pairs(batch, self.model_kwargs["pair_probes"])
        pair_logits = (z[src] * z[dst]).sum(-1)
        return VGAEOutput(mu, logstd, z, x_hat, id_logits, pair_logits, labels, batch.batch[src])

    def graph_errors(self, batch: GraphBatch, out: VGAEOutput) -> GraphErrors:
        """Mean reconstruction error of each graph, per decoder."""
        g = batch.num_graphs
        feature = (out.x_hat.float() - batch.x.float()).pow(2).mean(-1)
        ident = nn.functional.cross_entropy(out.id_logits.float(), batch.node_id, reduction="none")
        pairs = nn.functional.binary_cross_entropy_with_logits(out.pair_logits.float(), out.pair_labels,
                                                               reduction="none")
        return GraphErrors(
            feature=scatter(feature, batch.batch, 0, dim_size=g, reduce="mean"),
            id=scatter(ident, batch.batch, 0, dim_size=g, reduce="mean"),
            structure=scatter(pairs, out.pair_graph, 0, dim_size=g, reduce="mean"),
        )

    def combine(self, errors: GraphErrors) -> torch.Tensor:
        """Weighted sum of the per-graph errors: the anomaly score [G]."""
        k = self.model_kwargs
        return k["feature_weight"] * errors.feature + k["id_weight"] * errors.id + k["structure_weight"] * errors.structure

    def kl(self, out: VGAEOutput) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)), summed over latent dimensions and averaged over nodes."""
        mu, logstd = out.mu.float(), out.logstd.float()
        return -0.5 * torch.mean(torch.sum(1 + 2 * logstd - mu.pow(2) - (2 * logstd).exp(), dim=-1))

    def loss(self, batch: GraphBatch, out: VGAEOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss (mean score over graphs + weighted KL) and the per-graph scores."""
        scores = self.combine(self.graph_errors(batch, out))
        return scores.mean() + self.model_kwargs["kl_weight"] * self.kl(out), scores

    # -- inference ---------------------------------------------------------------
    def score(self, batch: GraphBatch) -> torch.Tensor:
        """Anomaly score of each graph [G]; deterministic in eval mode (latent = mean)."""
        return self.combine(self.graph_errors(batch, self(batch)))

    def latent_stats(self, batch: GraphBatch) -> torch.Tensor:
        """Per-graph mean and standard deviation over nodes of the latent means [G, 2 * latent_dim]."""
        mu, _ = self.encode(batch)
        g = batch.num_graphs
        mean = scatter(mu, batch.batch, 0, dim_size=g, reduce="mean")
        sq = scatter(mu.pow(2), batch.batch, 0, dim_size=g, reduce="mean")
        return torch.cat([mean, (sq - mean.pow(2)).clamp_min(0).sqrt()], dim=-1)


def probe_pairs(batch: GraphBatch, probes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Node pairs for the structure decoder: every edge (label 1) and each node with its next
    ``probes`` nodes of the same graph, cyclically (label 1 if an edge joins them either way).

    Self-loops are left out: an inner product of a latent with itself says nothing about structure.
    """
    n = batch.num_nodes
    device = batch.x.device
    src, dst = batch.edge_index[0].long(), batch.edge_index[1].long()
    keep = src != dst
    src, dst = src[keep], dst[keep]
    # Graph start and size of every node, from the sorted batch vector.
    sizes = torch.bincount(batch.batch, minlength=batch.num_graphs)
    starts = torch.cumsum(sizes, 0) - sizes
    node_start, node_size = starts[batch.batch], sizes[batch.batch]
    local = torch.arange(n, device=device) - node_start
    k = torch.arange(1, probes + 1, device=device)
    valid = k.unsqueeze(0) < node_size.unsqueeze(1)                      # [N, probes]: distinct nodes only
    partner = node_start.unsqueeze(1) + (local.unsqueeze(1) + k) % node_size.clamp_min(1).unsqueeze(1)
    a = torch.arange(n, device=device).unsqueeze(1).expand_as(partner)[valid]
    b = partner[valid]
    # Undirected edge membership: code(min, max) looked up in the sorted edge codes.
    codes = torch.unique(torch.minimum(src, dst) * n + torch.maximum(src, dst))
    probe_codes = torch.minimum(a, b) * n + torch.maximum(a, b)
    pos = torch.searchsorted(codes, probe_codes).clamp(max=max(codes.numel() - 1, 0))
    linked = codes[pos] == probe_codes if codes.numel() else torch.zeros_like(probe_codes, dtype=torch.bool)
    labels = torch.cat([torch.ones(src.numel(), device=device), linked.float()])
    return torch.cat([src, a]), torch.cat([dst, b]), labels
