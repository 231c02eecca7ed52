"""Filtered link-prediction ranks (pipeline.kg.ranking) and the decoders they rank with."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.kg import decoders
from pipeline.kg.cache import SPLITS
from pipeline.kg.config import KGNetConfig
from pipeline.kg.ranking import (
    EmbeddingScorer,
    KnownEdges,
    filtered_link_prediction,
    full_ranks,
    mean_ranks,
    rank_metrics,
)
from pipeline.kg.training import build_encoder
from tests.kg_helpers import (
    single_thread,  # noqa: F401  (autouse fixture)
    small_graph,
)

BIG = 1 << 40


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return small_graph(tmp_path_factory.mktemp("ranking"))


def integer_embeddings(graph, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Small integer values: every product and sum is exact in float32, so any order of summation
    gives the same score, and ties are common (they must get the mean rank)."""
    rng = np.random.default_rng(seed)
    return {t: rng.integers(-2, 3, size=(n, dim)).astype(np.float32) for t, n in graph.num_nodes.items()}


def reference_ranks(graph, model, emb, k: int, side: str) -> list[float]:
    """Each test edge on its own, with loops: score every candidate, drop the other true edges."""
    entry = graph.edge_types[k]
    src, dst = torch.from_numpy(emb[entry["src_alias"]]), torch.from_numpy(emb[entry["dst_alias"]])
    true = {tuple(e) for split in SPLITS for e in graph.edges(k, split).T.tolist()}
    ranks = []
    for h, t in graph.edges(k, "test").T.tolist():
        if side == "tail":
            scores = model.score(k, src[h][None, :], dst).detach()
            others = [float(s) for c, s in enumerate(scores) if (h, c) not in true]
            target = float(scores[t])
        else:
            scores = model.score(k, src, dst[t][None, :]).detach()
            others = [float(s) for c, s in enumerate(scores) if (c, t) not in true]
            target = float(scores[h])
        ranks.append(1 + sum(o > target for o in others) + 0.5 * sum(o == target for o in others))
    return ranks


@pytest.mark.parametrize("decoder", decoders.DECODERS)
def test_filtered_ranks_equal_a_per_edge_reference(graph, decoder):
    model = build_encoder(KGNetConfig(kind="sage", hidden=8, out=8, layers=1, decoder=decoder), graph)
    emb = integer_embeddings(graph, 8)
    scorer = EmbeddingScorer(model, graph, emb)
    for k in range(len(graph.edge_types)):
        held = graph.edges(k, "test").long()
        for side in ("tail", "head"):
            anchors, targets = (held[0], held[1]) if side == "tail" else (held[1], held[0])
            got = full_ranks(scorer, KnownEdges.of(graph, k, side), k, side, anchors, targets, chunk=7)
            assert got.tolist() == reference_ranks(graph, model, emb, k, side), (k, side)


def test_known_edges_are_every_split_and_nothing_else(graph):
    for k in range(len(graph.edge_types)):
        true = {tuple(e) for split in SPLITS for e in graph.edges(k, split).T.tolist()}
        anchors = torch.arange(graph.num_nodes[graph.edge_types[k]["src_alias"]])
        rows, partners = KnownEdges.of(graph, k, "tail").pairs(anchors)
        assert sorted(zip(anchors[rows].tolist(), partners.tolist())) == sorted(true)
        rows, partners = KnownEdges.of(graph, k, "head").pairs(torch.arange(graph.num_nodes[graph.edge_types[k]["dst_alias"]]))
        assert sorted((p, a) for a, p in zip(rows.tolist(), partners.tolist())) == sorted(true)


class ConstantScorer:
    """Scores a candidate 100 if it is a true partner of the anchor, else 0; the target ties with
    the other true partners. Filtered, they are gone: the target is first, then ties the rest."""

    def __init__(self, graph, k):
        self.known = {side: KnownEdges.of(graph, k, side) for side in ("tail", "head")}

    def candidates(self, k, side):
        return self.known[side].num_partners

    def all(self, k, side, anchors):
        scores = torch.zeros(anchors.numel(), self.known[side].num_partners)
        rows, cols = self.known[side].pairs(anchors)
        scores[rows, cols] = 100.0
        return scores

    def some(self, k, side, anchors, candidates):
        return torch.where(self.known[side].contains(anchors, candidates), 100.0, 0.0)

    def table_bytes(self, k, side):
        return 0


def test_filtering_removes_exactly_the_other_true_edges(graph):
    k = max(range(len(graph.edge_types)), key=lambda i: graph.edges(i, "test").shape[1])
    held = graph.edges(k, "test").long()
    known = KnownEdges.of(graph, k, "tail")
    scorer = ConstantScorer(graph, k)
    ranks = full_ranks(scorer, known, k, "tail", held[0], held[1], chunk=BIG)
    assert torch.all(ranks == 1.0)   # every other true tail filtered out, the rest score 0
    # unfiltered, the target would tie with its anchor's other true tails
    true_per_anchor = (known.indptr[held[0] + 1] - known.indptr[held[0]]).double()
    assert (true_per_anchor > 1).any()
    unfiltered = mean_ranks(torch.full((held.shape[1],), 100.0), scorer.all(k, "tail", held[0]))
    assert torch.equal(unfiltered, 1.0 + 0.5 * true_per_anchor)


def test_a_tie_gets_the_mean_of_the_optimistic_and_pessimistic_rank():
    target = torch.tensor([1.0, 5.0])
    others = torch.tensor([[2.0, 1.0, 1.0, 0.0, float("-inf")], [5.0, 5.0, 5.0, 6.0, 4.0]])
    assert mean_ranks(target, others).tolist() == [3.0, 3.5]   # (2 + 4) / 2; (2 + 5) / 2
    assert rank_metrics(torch.tensor([1.0, 3.0, 11.0])) == {
        "mrr": pytest.approx((1 + 1 / 3 + 1 / 11) / 3), "hits@1": pytest.approx(1 / 3),
        "hits@3": pytest.approx(2 / 3), "hits@10": pytest.approx(2 / 3)}


def test_chunked_computation_equals_the_unchunked_one(graph):
    model = build_encoder(KGNetConfig(kind="sage", hidden=8, out=8, layers=1, decoder="complex"), graph)
    scorer = EmbeddingScorer(model, graph, integer_embeddings(graph, 8, seed=3))
    whole = filtered_link_prediction(graph, scorer, budget_bytes=BIG)
    n = max(scorer.candidates(k, side) for k in range(len(graph.edge_types)) for side in ("tail", "head"))
    table = max(scorer.table_bytes(k, side) for k in range(len(graph.edge_types)) for side in ("tail", "head"))
    chunked = filtered_link_prediction(graph, scorer, budget_bytes=table + 64 * 16 * n)   # 64 queries a chunk
    assert chunked == whole
    assert all(m["candidates"]["tail"].startswith("all ") for m in whole["per_relation"].values())
    edges = sum(m["test_edges"] for m in whole["per_relation"].values())
    assert whole["mean_over_edges"]["mrr"] == pytest.approx(
        sum(2 * m["test_edges"] * m["mrr"] for m in whole["per_relation"].values()) / (2 * edges))
    assert whole["mean_over_relations"]["mrr"] == pytest.approx(
        np.mean([m["mrr"] for m in whole["per_relation"].values()]))


def test_without_room_for_a_full_ranking_every_model_meets_the_same_filtered_draw(graph):
    k = max(range(len(graph.edge_types)), key=lambda i: graph.edges(i, "test").shape[1])
    scorer = ConstantScorer(graph, k)
    tiny = filtered_link_prediction(graph, scorer, budget_bytes=1, sampled=20, seed=5)
    again = filtered_link_prediction(graph, scorer, budget_bytes=1, sampled=20, seed=5)
    other_seed = filtered_link_prediction(graph, scorer, budget_bytes=1, sampled=20, seed=6)
    name = graph.edge_type_name(k)
    assert tiny["per_relation"][name]["candidates"]["tail"].startswith("20 sampled of ")
    assert tiny == again
    assert tiny["per_relation"][name]["mrr"] == 1.0             # true partners in the draw are filtered
    assert other_seed["per_relation"][name]["mrr"] == 1.0


@pytest.mark.parametrize("decoder", decoders.DECODERS)
def test_each_decoder_ranks_with_a_query_that_gives_the_pair_score(decoder):
    gen = torch.Generator().manual_seed(0)
    rel = decoders.relation_init(decoder, 3, 8)[1] + 0.3 * torch.randn(rel_width(decoder, 8), generator=gen)
    bias = torch.tensor(0.25)
    heads, tails = torch.randn(5, 8, generator=gen), torch.randn(7, 8, generator=gen)
    pairs = decoders.score(decoder, rel, bias, heads[:, None, :], tails[None, :, :])
    tail_ranked = decoders.rank_scores(decoder, bias, decoders.tail_query(decoder, rel, heads), tails)
    head_ranked = decoders.rank_scores(decoder, bias, decoders.head_query(decoder, rel, tails), heads).T
    assert torch.allclose(tail_ranked, pairs, atol=1e-5) and torch.allclose(head_ranked, pairs, atol=1e-5)
    identity = decoders.relation_init(decoder, 1, 8)[0]
    if decoder != "complex":   # DistMult and RotatE start as h o r = h
        assert torch.allclose(decoders.tail_query(decoder, identity, heads), heads)
    assert not math.isnan(float(pairs.sum()))


def rel_width(decoder: str, dim: int) -> int:
    return dim // 2 if decoder == "rotate" else dim


def test_odd_width_is_refused_for_complex_halves():
    with pytest.raises(ValueError, match="must be even"):
        KGNetConfig(kind="sage", out=7, decoder="rotate")
