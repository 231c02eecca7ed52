"""Link score functions on top of the encoder's embeddings: DistMult, ComplEx and RotatE.

The encoder (HGT, GraphSAGE) embeds nodes; a decoder turns a (source, edge type, destination) pair
of embeddings into a logit. The three are the score functions of the standard knowledge-graph
embedding models the report compares against (``bench/kg_peers.py``):

    distmult   <h, r, t> = sum h * r * t                         (symmetric in h and t)
    complex    Re(<h, r, conj(t)>) with h, r, t complex halves   (Trouillon et al. 2016)
    rotate     -|| h o r - t ||^2 with r a unit complex rotation (Sun et al. 2019; squared, which
               ranks candidates as the plain distance does and needs only a matrix product)

Each is scaled to start unsaturated, plus a learned offset per edge type: the products by
1/sqrt(width), RotatE's squared distance (a sum of width terms, each about 2 at initialisation) by
1/width, which keeps its logits near the products' at any width. Ranking
every candidate of a type at once needs the score as a product of a query with the candidates:
``tail_query`` (from the heads) and ``head_query`` (from the tails) give that query, and
``rank_scores`` scores it against a block of candidate embeddings; for a pair it equals ``score``.

The relation parameters are one tensor per edge type: DistMult's diagonal, ComplEx's complex
diagonal (real half, imaginary half), RotatE's rotation phases (half the width).
"""
from __future__ import annotations

import math

import torch

DECODERS = ("distmult", "complex", "rotate")


def relation_init(kind: str, num_edge_types: int, dim: int) -> torch.Tensor:
    """Initial relation parameters: the identity of each score function (h o r = h)."""
    if kind not in DECODERS:
        raise ValueError(f"unknown decoder {kind!r}; valid: {list(DECODERS)}")
    if kind != "distmult" and dim % 2:
        raise ValueError(f"decoder {kind} reads embeddings as complex halves: the width ({dim}) must be even")
    if kind == "distmult":
        return torch.ones(num_edge_types, dim)
    if kind == "complex":
        return torch.cat([torch.ones(num_edge_types, dim // 2), torch.zeros(num_edge_types, dim // 2)], dim=1)
    return torch.zeros(num_edge_types, dim // 2)


def _scale(kind: str, dim: int) -> float:
    return 1.0 / dim if kind == "rotate" else 1.0 / math.sqrt(dim)


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def _rotate(x: torch.Tensor, phase: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """``x`` (complex halves) rotated by ``sign * phase``."""
    re, im = _halves(x)
    cos, sin = torch.cos(phase), sign * torch.sin(phase)
    return torch.cat([re * cos - im * sin, re * sin + im * cos], dim=-1)


def score(kind: str, rel: torch.Tensor, bias: torch.Tensor, h_src: torch.Tensor, h_dst: torch.Tensor) -> torch.Tensor:
    """Logits of pairs (broadcast over leading dimensions) for one edge type's ``rel`` and ``bias``."""
    scale = _scale(kind, h_src.shape[-1])
    if kind == "rotate":
        diff = _rotate(h_src, rel) - h_dst
        return bias - (diff * diff).sum(-1) * scale
    return (tail_query(kind, rel, h_src) * h_dst).sum(-1) * scale + bias


def tail_query(kind: str, rel: torch.Tensor, h_src: torch.Tensor) -> torch.Tensor:
    """The query whose product with a tail's embedding is its score (before scale and offset); for
    rotate, the point the tails are measured against."""
    if kind == "distmult":
        return h_src * rel
    if kind == "complex":
        a, b = _halves(h_src)
        c, d = _halves(rel)
        return torch.cat([a * c - b * d, a * d + b * c], dim=-1)
    return _rotate(h_src, rel)


def head_query(kind: str, rel: torch.Tensor, h_dst: torch.Tensor) -> torch.Tensor:
    """As ``tail_query``, from the tail: what a head's embedding is scored against."""
    if kind == "distmult":
        return h_dst * rel
    if kind == "complex":
        c, d = _halves(rel)
        e, f = _halves(h_dst)
        return torch.cat([c * e + d * f, c * f - d * e], dim=-1)
    return _rotate(h_dst, rel, sign=-1.0)   # |h o r - t| = |h - t o r^-1| for a unit rotation


def rank_scores(kind: str, bias: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Scores [P, N] of ``query`` [P, D] against every row of ``candidates`` [N, D] (a matrix product)."""
    scale = _scale(kind, query.shape[-1])
    if kind == "rotate":
        sq = (query * query).sum(-1, keepdim=True) - 2 * query @ candidates.T + (candidates * candidates).sum(-1)
        return bias - sq * scale
    return (query @ candidates.T) * scale + bias
