"""Filtered link-prediction ranks: the protocol the knowledge-graph embedding literature reports.

For every held-out test edge (h, r, t), two queries: (h, r, ?) ranks t among every node of the
type r allows as a tail, and (?, r, t) ranks h among every node of the type r allows as a head.
Every other true edge of r (train, validation or test) is filtered out of the candidates before
ranking (Bordes et al. 2013; OGB's biokg), so a model is not penalised for scoring another true
answer above the one asked about. A tie counts as the mean of the optimistic and the pessimistic
rank: ``1 + #higher + #equal / 2``. Reported: MRR and Hits@1/3/10 per relation, averaged over
relations, and over every ranked edge (each test edge counts twice, head and tail).

Ranks are computed in chunks of queries whose scores fit a byte budget (the memory plan of the
export). Where even the candidate table and one chunk do not fit, each query is ranked against a
fixed draw of ``sampled`` candidates of the allowed type (OGB's protocol for large graphs), filtered
the same way; the draw depends only on the graph and the seed, so every model meets the same one.

Scorers are anything that scores anchors against candidates (``Scorer``): the encoders through their
decoder (``EmbeddingScorer``), or a peer model trained outside the project (``bench/kg_peers.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.kg.cache import SPLITS, KGGraph

BYTES_PER_SCORE = 16
"""A chunk's score matrix, its comparisons and the filter mask, per candidate and query (float32)."""
MIN_CHUNK = 64
"""Queries per chunk a full ranking must afford, beside the candidate table, to be chosen."""
HITS = (1, 3, 10)
SIDES = ("tail", "head")


class Scorer(Protocol):
    def candidates(self, k: int, side: str) -> int:
        """How many nodes the ``side`` of edge type ``k`` allows."""

    def all(self, k: int, side: str, anchors: torch.Tensor) -> torch.Tensor:
        """Scores [P, N] of each anchor's query against every candidate of the side's type."""

    def some(self, k: int, side: str, anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores [P, K] of each anchor's query against its own candidates [P, K]."""

    def table_bytes(self, k: int, side: str) -> int:
        """Memory a full ranking holds besides the scores (the candidates' embeddings)."""


class EmbeddingScorer:
    """An encoder's embeddings (node type -> [N, D]) scored by its decoder."""

    def __init__(self, model: Any, graph: KGGraph, emb: dict[str, np.ndarray | torch.Tensor]):
        self.model, self.graph = model, graph
        self.tables = {t: torch.as_tensor(x).float() for t, x in emb.items()}

    def _types(self, k: int, side: str) -> tuple[str, str]:
        entry = self.graph.edge_types[k]
        src, dst = entry["src_alias"], entry["dst_alias"]
        return (src, dst) if side == "tail" else (dst, src)

    def _query(self, k: int, side: str, anchors: torch.Tensor) -> torch.Tensor:
        anchor_type, _ = self._types(k, side)
        h = self.tables[anchor_type][anchors]
        return self.model.tail_query(k, h) if side == "tail" else self.model.head_query(k, h)

    def candidates(self, k: int, side: str) -> int:
        return int(self.tables[self._types(k, side)[1]].shape[0])

    @torch.no_grad()
    def all(self, k: int, side: str, anchors: torch.Tensor) -> torch.Tensor:
        return self.model.rank_scores(k, self._query(k, side, anchors), self.tables[self._types(k, side)[1]])

    @torch.no_grad()
    def some(self, k: int, side: str, anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        anchor_type, other = self._types(k, side)
        h, c = self.tables[anchor_type][anchors][:, None, :], self.tables[other][candidates]
        return self.model.score(k, h, c) if side == "tail" else self.model.score(k, c, h)

    def table_bytes(self, k: int, side: str) -> int:
        table = self.tables[self._types(k, side)[1]]
        return table.numel() * table.element_size()


@dataclass(frozen=True)
class KnownEdges:
    """Every true edge of one edge type, for one side: anchor -> sorted true partners (CSR)."""

    indptr: torch.Tensor
    partners: torch.Tensor
    keys: torch.Tensor
    """anchor * num_partners + partner, sorted: membership by binary search."""
    num_partners: int

    @classmethod
    def of(cls, graph: KGGraph, k: int, side: str) -> "KnownEdges":
        entry = graph.edge_types[k]
        edges = torch.cat([graph.edges(k, split) for split in SPLITS], dim=1).long()
        anchor, partner = (edges[0], edges[1]) if side == "tail" else (edges[1], edges[0])
        n_anchor = graph.num_nodes[entry["src_alias" if side == "tail" else "dst_alias"]]
        n_partner = graph.num_nodes[entry["dst_alias" if side == "tail" else "src_alias"]]
        keys = torch.unique(anchor * n_partner + partner)
        indptr = torch.zeros(n_anchor + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(torch.bincount(keys // n_partner, minlength=n_anchor), 0)
        return cls(indptr, keys % n_partner, keys, n_partner)

    def pairs(self, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, partner) of every known edge of each anchor (rows index ``anchors``)."""
        start, count = self.indptr[anchors], self.indptr[anchors + 1] - self.indptr[anchors]
        rows = torch.repeat_interleave(torch.arange(anchors.numel()), count)
        first = torch.repeat_interleave(start - torch.cumsum(count, 0) + count, count)
        return rows, self.partners[first + torch.arange(rows.numel())]

    def contains(self, anchors: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
        """Whether (anchor, partner) is a known edge, elementwise ([P, K] partners, [P] anchors)."""
        keys = anchors[:, None] * self.num_partners + partners
        pos = torch.searchsorted(self.keys, keys).clamp_max(max(self.keys.numel() - 1, 0))
        return self.keys[pos] == keys if self.keys.numel() else torch.zeros_like(keys, dtype=torch.bool)


def mean_ranks(target: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """1 + #higher + #equal / 2 of each row's ``target`` score among its ``others`` (-inf: filtered)."""
    higher = (others > target[:, None]).sum(1)
    equal = (others == target[:, None]).sum(1)
    return 1.0 + higher.double() + 0.5 * equal.double()


def full_ranks(scorer: Scorer, known: KnownEdges, k: int, side: str, anchors: torch.Tensor, targets: torch.Tensor,
               chunk: int) -> torch.Tensor:
    """Filtered ranks against every candidate, ``chunk`` queries at a time."""
    out = []
    for lo in range(0, anchors.numel(), chunk):
        a, t = anchors[lo:lo + chunk], targets[lo:lo + chunk]
        scores = scorer.all(k, side, a).float()
        target = scores[torch.arange(a.numel()), t].clone()
        rows, cols = known.pairs(a)
        scores[rows, cols] = float("-inf")   # every true partner, the target too
        out.append(mean_ranks(target, scores))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def sampled_ranks(scorer: Scorer, known: KnownEdges, k: int, side: str, anchors: torch.Tensor,
                  targets: torch.Tensor, sampled: int, seed: int, chunk: int) -> torch.Tensor:
    """Filtered ranks against a fixed draw of ``sampled`` candidates per query."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 2 * k + SIDES.index(side))
    draw = torch.randint(0, known.num_partners, (anchors.numel(), sampled), generator=gen)
    out = []
    for lo in range(0, anchors.numel(), chunk):
        a, t, c = anchors[lo:lo + chunk], targets[lo:lo + chunk], draw[lo:lo + chunk]
        target = scorer.some(k, side, a, t[:, None]).float()[:, 0]
        scores = scorer.some(k, side, a, c).float().masked_fill(known.contains(a, c), float("-inf"))
        out.append(mean_ranks(target, scores))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def rank_metrics(ranks: torch.Tensor) -> dict[str, float]:
    if ranks.numel() == 0:
        return {"mrr": float("nan"), **{f"hits@{n}": float("nan") for n in HITS}}
    return {"mrr": float((1.0 / ranks).mean()), **{f"hits@{n}": float((ranks <= n).double().mean()) for n in HITS}}


def filtered_link_prediction(graph: KGGraph, scorer: Scorer, budget_bytes: int, sampled: int = 500,
                             seed: int = 0, split: str = "test") -> dict[str, Any]:
    """Filtered MRR and Hits@k of ``scorer`` on ``split``'s edges: per relation, averaged over
    relations, and over every ranked edge; with how each relation's candidates were chosen."""
    per_relation: dict[str, dict[str, Any]] = {}
    pooled = []
    for k in range(len(graph.edge_types)):
        held = graph.edges(k, split).long()
        if held.shape[1] == 0:
            continue
        ranks, modes = [], {}
        for side in SIDES:
            anchors, targets = (held[0], held[1]) if side == "tail" else (held[1], held[0])
            known = KnownEdges.of(graph, k, side)
            n = scorer.candidates(k, side)
            rows = (budget_bytes - scorer.table_bytes(k, side)) // max(n * BYTES_PER_SCORE, 1)
            if rows >= MIN_CHUNK:
                modes[side] = f"all {n}"
                ranks.append(full_ranks(scorer, known, k, side, anchors, targets, int(rows)))
            else:
                modes[side] = f"{sampled} sampled of {n}"
                row_bytes = scorer.table_bytes(k, side) // max(n, 1)   # a candidate's embedding
                chunk = max(1, budget_bytes // max(sampled * (3 * row_bytes + BYTES_PER_SCORE), 1))
                ranks.append(sampled_ranks(scorer, known, k, side, anchors, targets, sampled, seed, chunk))
        both = torch.cat(ranks)
        pooled.append(both)
        per_relation[graph.edge_type_name(k)] = {"test_edges": int(held.shape[1]), "candidates": modes,
                                                 **rank_metrics(both),
                                                 **{f"{side}_mrr": rank_metrics(r)["mrr"] for side, r in zip(SIDES, ranks)}}
    keys = ("mrr", *(f"hits@{n}" for n in HITS))
    return {
        "per_relation": per_relation,
        "mean_over_relations": {key: float(np.mean([m[key] for m in per_relation.values()])) if per_relation
                                else float("nan") for key in keys},
        "mean_over_edges": rank_metrics(torch.cat(pooled) if pooled else torch.zeros(0)),
        "protocol": "filtered; head and tail; type-restricted candidates; ties at the mean rank",
    }
