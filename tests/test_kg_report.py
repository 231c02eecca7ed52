"""The embedding report: geometry, collapse detection, held-out link prediction, label macro-F1, plot."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.kg.loss import rank_metrics
from pipeline.kg.report import (
    EmbeddingCollapsed,
    check_collapse,
    geometry,
    label_f1,
    link_prediction,
    markdown,
    mean_link_metrics,
    pca_plot,
    rank_held_out,
    sample_nodes,
)
from tests.kg_helpers import (
    single_thread,  # noqa: F401  (autouse fixture)
    small_graph,
)


def test_healthy_and_collapsed_geometry(tmp_path):
    rng = np.random.default_rng(0)
    healthy = rng.normal(size=(300, 64))
    geo = geometry(healthy, np.arange(300) % 3)
    assert abs(geo["mean_cosine"]) < 0.05 and geo["pca_components_90"] > 30
    check_collapse("ok", geo, 0.9, 5, tmp_path / "r.md")
    # everything near one direction: high cosine, one component
    collapsed = np.ones((300, 64)) + 0.01 * rng.normal(size=(300, 64))
    geo = geometry(collapsed, np.arange(300) % 3)
    assert geo["mean_cosine"] > 0.99
    with pytest.raises(EmbeddingCollapsed, match="mean pairwise cosine .* > 0.9"):
        check_collapse("teacher", geo, 0.9, 5, tmp_path / "r.md")
    # a rank-2 embedding: few components even though cosines are spread
    flat = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 64))
    with pytest.raises(EmbeddingCollapsed, match="PCA component"):
        check_collapse("student", geometry(flat, np.zeros(300, dtype=int)), 0.9, 5, tmp_path / "r.md")


def test_within_and_across_type_similarity():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(2, 32)) * 5
    types = np.repeat([0, 1], 100)
    x = centers[types] + rng.normal(size=(200, 32))
    geo = geometry(x, types)
    assert geo["within_type_cosine"] > 0.8 > geo["across_type_cosine"]


def test_rank_metrics():
    pos = torch.tensor([3.0, 2.0])
    neg = torch.tensor([[1.0, 0.0, 2.5], [2.0, 5.0, -1.0]])
    auc, mrr = rank_metrics(pos, neg)
    assert mrr == pytest.approx((1 / 1 + 1 / 2.5) / 2)  # second positive: one above, one tie
    assert 0.5 < auc < 1


def test_link_prediction_and_labels_on_planted_embeddings(tmp_path):
    graph = small_graph(tmp_path, scale=0.001)
    # embeddings that know the answer: every edge's endpoints share a random direction
    rng = np.random.default_rng(0)
    emb = {t: rng.normal(size=(n, 64)).astype(np.float32) * 0.1 for t, n in graph.num_nodes.items()}
    for k, e in enumerate(graph.edge_types):
        test = graph.edges(k, "test").numpy()
        for u, v in test.T:
            d = rng.normal(size=64)
            emb[e["src_alias"]][u] += d
            emb[e["dst_alias"]][v] += d
    rel = torch.ones(len(graph.edge_types), 64)
    lp = link_prediction(emb, rel, graph, negatives=20)
    assert lp and np.mean([m["auc"] for m in lp.values()]) > 0.8  # tiny types (2 nodes) rank against themselves
    # any scorer restricted to one edge type is ranked against that type's same negatives
    k = max(range(len(graph.edge_types)), key=lambda k: graph.edges(k, "test").shape[1])
    e = graph.edge_types[k]

    def planted(k, u, v):
        hs, hd = torch.from_numpy(emb[e["src_alias"]])[u], torch.from_numpy(emb[e["dst_alias"]])[v]
        return (hs * hd).sum(-1) if v.dim() == 1 else torch.einsum("pd,pkd->pk", hs, hd)
    only = rank_held_out(graph, planted, negatives=20, edge_types={k})
    assert list(only) == [graph.edge_type_name(k)] and only[graph.edge_type_name(k)] == lp[graph.edge_type_name(k)]
    # labels: a node type whose label is the sign of its first coordinate
    t = graph.node_types[0]
    ids = graph.node_table(t).column("node_id").to_pylist()
    emb[t] = np.zeros_like(emb[t])
    emb[t][:, 0] = np.where(np.arange(len(ids)) % 2 == 0, 3.0, -3.0)
    labels = pd.DataFrame({"node_type": graph.type_name(t), "node_id": ids,
                           "label": ["even" if i % 2 == 0 else "odd" for i in range(len(ids))]})
    path = tmp_path / "labels.csv"
    labels.to_csv(path, index=False)
    res = label_f1(emb, graph, path, test_fraction=0.3)
    assert res["macro_f1"] == 1.0 and res["classes"] == 2 and res["test"] == round(0.3 * len(ids) + 0.49)
    assert res["macro_f1_over_splits"]["splits"] == 5 and res["macro_f1_over_splits"]["min"] == 1.0
    x, types = sample_nodes(emb, 100)
    report = {"nodes": 10, "dim": 64, "model": "HGT", "geometry": geometry(x, types), "negatives": 20,
              "link_prediction": lp, "link_prediction_mean": mean_link_metrics(lp), "labels": res,
              "edge_split": {"val_fraction": 0.05, "test_fraction": 0.1, "holdout_max": 10_000, "split_seed": 3,
                             "rule": "per edge type"}, "plot": str(tmp_path / "pca.png")}
    text = markdown("teacher", report)
    assert "test_fraction=0.1 (at most 10000 per edge type and split), seed=3" in text
    assert "test_fraction=0.3" in text and f"macro-F1 **{res['macro_f1']:.4f}**" in text
    assert "Over 5 stratified splits (seeds 0..4): macro-F1 1.0000 ± 0.0000" in text
    assert "Edge split" not in markdown("teacher", {**report, "edge_split": None})
    pca_plot(x, types, [graph.type_name(t) for t in emb], "test", tmp_path / "pca.png")
    assert (tmp_path / "pca.png").read_bytes()[:4] == b"\x89PNG"


def test_labels_file_errors(tmp_path):
    graph = small_graph(tmp_path, scale=0.001)
    emb = {t: np.zeros((n, 4), np.float32) for t, n in graph.num_nodes.items()}
    bad = tmp_path / "bad.csv"
    bad.write_text("type,id,label\nx,1,a\n")
    with pytest.raises(ValueError, match="missing column"):
        label_f1(emb, graph, bad, 0.2)
    none = tmp_path / "none.csv"
    none.write_text("node_type,node_id,label\nnot-a-type,1,a\n")
    with pytest.raises(ValueError, match="no labelled node"):
        label_f1(emb, graph, none, 0.2)
