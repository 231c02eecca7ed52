"""VGAE: shapes, gradients, structure probes, deterministic scores; the autoencoder stage and its threshold."""
import json

import pytest
import torch

from pipeline.can.data.cache import GraphSplit
from pipeline.can.detector import choose_threshold
from pipeline.can.models.vgae import VGAE, probe_pairs
from pipeline.runner import run_stage
from pipeline.train import load_model
from tests.helpers import EDGE_FEATURES, NODE_FEATURES, VOCAB, synthetic_split
from tests.kd_helpers import upstream_run


def _split(num_graphs: int = 6, **kw) -> GraphSplit:
    return GraphSplit(synthetic_split(num_graphs, seed=3, **kw))


def _model(**kw) -> VGAE:
    args = dict(num_ids=len(VOCAB) + 1, node_features=len(NODE_FEATURES), edge_features=len(EDGE_FEATURES),
                hidden=4, heads=2, layers=2, latent_dim=4, id_embed_dim=3, pair_probes=3)
    return VGAE(**{**args, **kw})


def test_forward_backward_and_shapes():
    batch = _split().collate(torch.arange(6))
    model = _model()
    out = model(batch)
    assert out.mu.shape == out.z.shape == (batch.num_nodes, 4)
    assert out.x_hat.shape == batch.x.shape and out.id_logits.shape == (batch.num_nodes, len(VOCAB) + 1)
    assert out.pair_logits.shape == out.pair_labels.shape == out.pair_graph.shape
    loss, scores = model.loss(batch, out)
    assert scores.shape == (6,) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_probe_pairs_match_a_brute_force_count():
    batch = _split(5).collate(torch.arange(5))
    src, dst, labels = probe_pairs(batch, probes=2)
    edges = {(int(a), int(b)) for a, b in batch.edge_index.t() if a != b}
    undirected = edges | {(b, a) for a, b in edges}
    n_edges = len([1 for a, b in batch.edge_index.t() if a != b])
    assert labels[:n_edges].eq(1).all()
    for a, b, label in zip(src[n_edges:].tolist(), dst[n_edges:].tolist(), labels[n_edges:].tolist()):
        assert batch.batch[a] == batch.batch[b] and a != b
        assert label == float((a, b) in undirected)
    sizes = torch.bincount(batch.batch)
    assert src.numel() - n_edges == int(torch.clamp(sizes - 1, max=2).mul(sizes).sum())


def test_scores_are_deterministic_and_independent_of_the_batch():
    split = _split(8)
    model = _model().eval()
    with torch.no_grad():
        whole = model.score(split.collate(torch.arange(8)))
        parts = torch.cat([model.score(split.collate(torch.arange(0, 3))), model.score(split.collate(torch.arange(3, 8)))])
        again = model.score(split.collate(torch.arange(8)))
    assert torch.allclose(whole, parts, atol=1e-5) and torch.equal(whole, again)
    stats = model.latent_stats(split.collate(torch.arange(8)))
    assert stats.shape == (8, 8) and (stats[:, 4:] >= 0).all()


def test_single_node_graphs_score_without_structure_pairs():
    split = _split(4, min_nodes=1, max_nodes=1)
    model = _model().eval()
    with torch.no_grad():
        batch = split.collate(torch.arange(4))
        errors = model.graph_errors(batch, model(batch))
    assert torch.isfinite(model.combine(errors)).all()


def test_threshold_is_the_best_f1_on_val_or_a_normal_quantile():
    y = torch.tensor([0, 0, 0, 1, 1])
    chosen = choose_threshold(y, torch.tensor([0.1, 0.2, 0.3, 0.9, 0.8]))
    assert chosen["val_f1"] == 1.0 and 0.3 < chosen["threshold"] <= 0.8
    normal_only = choose_threshold(torch.zeros(100, dtype=torch.long), torch.linspace(0, 1, 100))
    assert normal_only["threshold"] == pytest.approx(0.99) and "quantile" in normal_only["method"]


def test_autoencoder_stage_trains_on_normal_graphs_and_thresholds_on_val(tmp_path):
    run = upstream_run(tmp_path, stages=())
    result = run_stage(run.path, "autoencoder")
    assert result["best_val"]["auroc"] > 0.75, result["best_val"]
    detector = result["anomaly_detectors"]["vgae"]
    assert json.loads((run.path / "autoencoder" / "threshold.json").read_text())["threshold"] == detector["threshold"]
    model = load_model(result["best_checkpoint"])
    assert isinstance(model, VGAE) and result["params"] == sum(p.numel() for p in model.parameters())
    # each epoch saw the attack-free train graphs only: 138 of the 240 synthetic windows, 32 per batch
    log = (run.path / "autoencoder" / "log").read_text()
    assert "138 attack-free of 240 train graphs" in log
