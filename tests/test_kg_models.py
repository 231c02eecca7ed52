"""HGT and GraphSAGE encoders: shapes, checkpoints, the segment projection, and layer-wise == full forward."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import ProfileError, load_profile
from pipeline.kg.config import KGNetConfig
from pipeline.kg.inference import chunk_bounds, layerwise_embeddings
from pipeline.kg.models.hgt import HGT
from pipeline.kg.sampler import KGBatch, LinkBatchLoader
from pipeline.kg.training import build_encoder
from pipeline.train import load_model
from tests.kg_helpers import (
    single_thread,  # noqa: F401  (autouse fixture)
    small_graph,
)

TINY = {"hgt": KGNetConfig(kind="hgt", hidden=16, out=24, heads=4, layers=2, dropout=0.0),
        "sage": KGNetConfig(kind="sage", hidden=16, out=24, layers=2, dropout=0.0),
        "hgt-jk": KGNetConfig(kind="hgt", hidden=16, out=24, heads=4, layers=3, dropout=0.0, jk="cat"),
        "sage-shared": KGNetConfig(kind="sage", hidden=16, out=24, layers=2, dropout=0.0, id_min_degree=3)}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return small_graph(tmp_path_factory.mktemp("kg"), scale=0.001)


def full_batch(graph) -> KGBatch:
    """Every node and every training message edge: the full-graph forward (tests and benchmarks only)."""
    n_id = {t: torch.arange(n) for t, n in graph.num_nodes.items()}
    edges = {}
    for mt, (ptr, col) in graph.csc.items():
        dst = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())
        edges[mt] = torch.stack([col, dst])
    return KGBatch(n_id, edges, [])


@pytest.mark.parametrize("kind", ["hgt", "sage"])
def test_forward_shapes_and_loss_backward(graph, kind):
    model = build_encoder(TINY[kind], graph)
    loader = LinkBatchLoader(graph, 32, [3, 2], sampler="torch")
    loader.set_epoch(1)
    batch = next(iter(loader))
    emb = model(batch)
    # trimmed per layer: the seed nodes (the first hops[t][0] of each type) get embeddings
    assert set(emb) == {t for t, h in batch.hops.items() if h[0]}
    assert all(emb[t].shape == (batch.hops[t][0], 24) for t in emb)
    from pipeline.kg.loss import link_loss

    loss, _ = link_loss(contrastive_weight=0.5)(model, batch)
    loss.backward()
    assert model.embed[graph.node_types[0]].weight.grad is not None
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", ["hgt", "sage", "hgt-jk", "sage-shared"])
def test_trimming_layers_does_not_change_seed_embeddings(graph, kind):
    import dataclasses

    torch.manual_seed(0)
    model = build_encoder(TINY[kind], graph).eval()
    loader = LinkBatchLoader(graph, 32, [3, 2, 2], sampler="torch")
    loader.set_epoch(1)
    batch = next(iter(loader))
    with torch.no_grad():
        trimmed = model(batch)
        whole = model(dataclasses.replace(batch, hops=None))
    for t, h in trimmed.items():
        assert torch.allclose(h, whole[t][:h.shape[0]], atol=1e-5), t


@pytest.mark.parametrize("kind", ["hgt", "sage", "hgt-jk", "sage-shared"])
def test_layerwise_inference_equals_the_full_forward(graph, kind):
    torch.manual_seed(0)
    model = build_encoder(TINY[kind], graph).eval()
    with torch.no_grad():
        full = model(full_batch(graph))
    # tiny chunks: many chunks per type, and nodes whose in-edges exceed the edge budget
    chunked = layerwise_embeddings(model, graph, chunk_nodes=7, chunk_edges=20)
    for t in graph.node_types:
        assert torch.allclose(torch.from_numpy(chunked[t]), full[t], atol=1e-5), t


def test_chunk_bounds_respect_both_budgets():
    degree = torch.tensor([1, 1, 50, 2, 2, 2, 0, 3])
    bounds = chunk_bounds(degree, chunk_nodes=3, chunk_edges=5)
    assert bounds[0][0] == 0 and bounds[-1][1] == 8
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    for lo, hi in bounds:
        assert hi - lo <= 3
        assert int(degree[lo:hi].sum()) <= 5 or hi - lo == 1  # a hub is a chunk of its own
    assert (2, 3) in bounds


def test_checkpoint_rebuilds_the_model(graph, tmp_path):
    model = build_encoder(TINY["hgt"], graph, align_dim=32)
    torch.save({"model_class": "pipeline.kg.models.hgt:HGT", "model_kwargs": model.model_kwargs,
                "state_dict": model.state_dict()}, tmp_path / "best.pt")
    again = load_model(tmp_path / "best.pt")
    assert isinstance(again, HGT) and again.align.out_features == 32
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_dims_must_divide_by_heads_and_fanouts_cover_layers():
    with pytest.raises(ValueError, match="divisible by heads"):
        KGNetConfig(kind="hgt", hidden=100, out=512, heads=8)
    KGNetConfig(kind="sage", hidden=100, out=50, heads=8)  # heads do not apply to SAGE
    with pytest.raises(ProfileError, match="kg_model.teacher.*divisible|divisible"):
        load_profile("primekg", ["kg_model.teacher.hidden=250"])
    with pytest.raises(ProfileError, match="fanouts"):
        load_profile("primekg", ["kg.fanouts=[10]"])


def test_compact_hgt_conv_matches_pyg():
    from torch_geometric.nn import HGTConv

    from pipeline.kg.models.hgt import CompactHGTConv

    torch.manual_seed(0)
    meta = (["a", "b"], [("a", "r0", "b"), ("b", "r1", "a"), ("a", "r2", "a")])
    ref = HGTConv(16, 16, meta, heads=4)
    ours = CompactHGTConv(16, 16, meta, heads=4)
    ours.load_state_dict(ref.state_dict())
    x = {"a": torch.randn(30, 16), "b": torch.randn(20, 16)}
    edges = {("a", "r0", "b"): torch.stack([torch.randint(0, 5, (40,)), torch.randint(0, 20, (40,))]),
             ("b", "r1", "a"): torch.stack([torch.randint(0, 20, (15,)), torch.randint(0, 30, (15,))]),
             ("a", "r2", "a"): torch.stack([torch.randint(0, 30, (25,)), torch.randint(0, 30, (25,))])}
    expected, got = ref(x, edges), ours(x, edges)
    assert all(torch.allclose(expected[t], got[t], atol=1e-5) for t in expected)
