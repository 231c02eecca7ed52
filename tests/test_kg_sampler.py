"""Sampled link batches: valid edges, fanout bounds, no target leak, determinism, and the PyG/torch backends."""
from __future__ import annotations

import pytest
import torch

import pipeline.kg.neighbors as neighbors_mod
from pipeline.kg.neighbors import PygNeighborSampler, TorchNeighborSampler, make_neighbor_sampler
from pipeline.kg.sampler import LinkBatchLoader, LinkEvalLoader, allocate_seeds, corrupt
from tests.kg_helpers import (
    single_thread,  # noqa: F401  (autouse fixture)
    small_graph,
)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return small_graph(tmp_path_factory.mktemp("kg"), scale=0.001, val_fraction=0.05, test_fraction=0.1)


def train_pairs(graph, mt) -> set[tuple[int, int]]:
    ptr, col = graph.csc[mt]
    dst = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())
    return set(zip(col.tolist(), dst.tolist()))


def test_batch_edges_exist_and_respect_fanouts(graph):
    loader = LinkBatchLoader(graph, seed_edges=64, fanouts=[3, 2], sampler="torch")
    loader.set_epoch(1)
    batch = next(iter(loader))
    assert batch.num_graphs == sum(allocate_seeds(loader.train_counts, 64).values())
    for mt, ei in batch.edge_index.items():
        src_t, _, dst_t = mt
        glob = set(zip(batch.n_id[src_t][ei[0]].tolist(), batch.n_id[dst_t][ei[1]].tolist()))
        assert glob <= train_pairs(graph, mt), mt
        # at most fanout(hop 1) + fanout(hop 2) sampled incoming edges per node and message type
        assert int(torch.bincount(ei[1]).max()) <= 3 + 2
    for t, ids in batch.n_id.items():
        assert ids.unique().numel() == ids.numel()  # a node appears once per type


def test_targets_point_at_the_right_nodes_and_are_not_in_the_subgraph(graph):
    loader = LinkBatchLoader(graph, seed_edges=64, fanouts=[5, 5], neg_ratio=2, sampler="torch")
    loader.set_epoch(1)
    batch = next(iter(loader))
    for tgt in batch.targets:
        pos = torch.stack([batch.n_id[tgt.src_type][tgt.pos[0]], batch.n_id[tgt.dst_type][tgt.pos[1]]])
        train = set(map(tuple, graph.edges(tgt.edge_type, "train").T.tolist()))
        assert set(map(tuple, pos.T.tolist())) <= train
        assert tgt.neg.shape[1] == 2 * tgt.pos.shape[1]
        for mt, direction in graph.messages_of(tgt.edge_type):
            if mt not in batch.edge_index:
                continue
            ei = batch.edge_index[mt]
            carried = set(zip(batch.n_id[mt[0]][ei[0]].tolist(), batch.n_id[mt[2]][ei[1]].tolist()))
            wanted = {(u, v) for u, v in pos.T.tolist()}
            back = {(v, u) for u, v in wanted}
            leaked = {"fwd": wanted, "rev": back, "sym": wanted | back}[direction] & carried
            assert not leaked, (mt, leaked)


def test_epochs_are_reproducible_and_differ(graph):
    def first_batch(epoch: int):
        loader = LinkBatchLoader(graph, seed_edges=32, fanouts=[4, 2], seed=3, sampler="torch")
        loader.set_epoch(epoch)
        return next(iter(loader))

    a, b, c = first_batch(2), first_batch(2), first_batch(3)
    assert all(torch.equal(a.n_id[t], b.n_id[t]) for t in a.n_id)
    assert all(torch.equal(a.edge_index[k], b.edge_index[k]) for k in a.edge_index)
    assert any(not torch.equal(a.n_id[t], c.n_id[t]) for t in a.n_id if t in c.n_id)


def test_epoch_covers_every_train_edge(graph):
    loader = LinkBatchLoader(graph, seed_edges=200, fanouts=[1], sampler="torch")
    per = loader.seeds_per_type
    assert len(loader) == max(-(-loader.train_counts[k] // b) for k, b in per.items())
    seen = {k: set() for k in per}
    for batch in loader:
        for tgt in batch.targets:
            pos = torch.stack([batch.n_id[tgt.src_type][tgt.pos[0]], batch.n_id[tgt.dst_type][tgt.pos[1]]])
            seen[tgt.edge_type] |= set(map(tuple, pos.T.tolist()))
    for k in per:
        assert seen[k] == set(map(tuple, graph.edges(k, "train").T.tolist()))


def test_budget_shrink_and_steps_per_epoch(graph):
    loader = LinkBatchLoader(graph, seed_edges=100, fanouts=[2], steps_per_epoch=7, sampler="torch")
    assert len(loader) == 7 and len(list(loader)) == 7
    assert loader.shrink(0.5) == 50 and loader.max_nodes == 50
    loader.max_nodes = 1
    with pytest.raises(MemoryError):
        loader.shrink(0.5)


def test_negatives_stay_within_their_node_types():
    gen = torch.Generator().manual_seed(0)
    pos = torch.tensor([[0, 1, 2], [5, 6, 7]])
    neg = corrupt(pos, 4, num_src=3, num_dst=8, generator=gen)
    assert neg.shape == (2, 12)
    assert int(neg[0].max()) < 3 and int(neg[1].max()) < 8
    # each negative keeps one end of its positive
    rep = pos.repeat(1, 4)
    assert bool(((neg[0] == rep[0]) | (neg[1] == rep[1])).all())


def test_eval_loader_ranks_against_shared_candidates(graph):
    loader = LinkEvalLoader(graph, "val", [3, 2], batch_edges=8, max_per_type=16, negatives=11, sampler="torch")
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    assert all(b.targets[0].candidates.numel() == 11 for b in batches)
    again = list(LinkEvalLoader(graph, "val", [3, 2], batch_edges=8, max_per_type=16, negatives=11, sampler="torch"))
    assert all(torch.equal(x.targets[0].candidates, y.targets[0].candidates) for x, y in zip(batches, again))


# -- backends -----------------------------------------------------------------------------------------

def test_falls_back_to_pure_torch_without_pyg_kernels(graph, monkeypatch):
    monkeypatch.setattr(neighbors_mod, "pyg_sampling_available", lambda: False)
    assert isinstance(make_neighbor_sampler(graph, [2], "auto"), TorchNeighborSampler)
    with pytest.raises(ImportError, match="pyg-lib or torch-sparse"):
        make_neighbor_sampler(graph, [2], "pyg")


def test_this_machine_has_no_pyg_kernels_and_training_still_samples(graph):
    """The situation the pure-torch sampler exists for: NeighborLoader cannot run here."""
    if neighbors_mod.pyg_sampling_available():
        pytest.skip("pyg-lib or torch-sparse is installed here")
    assert isinstance(LinkBatchLoader(graph, 16, [2]).sampler, TorchNeighborSampler)


def test_uses_pyg_sampler_when_kernels_are_importable(graph, monkeypatch):
    """With pyg-lib present, ``auto`` wires PyG's NeighborSampler in; a stand-in checks the wiring."""
    import torch_geometric.sampler as pyg_sampler
    from torch_geometric.sampler import HeteroSamplerOutput

    calls = {}

    class FakeNeighborSampler:
        def __init__(self, data, num_neighbors):
            calls["edge_types"] = set(data.edge_types)
            calls["num_neighbors"] = num_neighbors
            self.inner = TorchNeighborSampler(graph, [2, 1])

        def _sample(self, seed):
            nodes, edges, _ = self.inner.sample(seed, torch.Generator().manual_seed(0))
            return HeteroSamplerOutput(node=nodes, row={k: v[0] for k, v in edges.items()},
                                       col={k: v[1] for k, v in edges.items()}, edge=None)

    monkeypatch.setattr(neighbors_mod, "pyg_sampling_available", lambda: True)
    monkeypatch.setattr(pyg_sampler, "NeighborSampler", FakeNeighborSampler)
    loader = LinkBatchLoader(graph, 32, [2, 1], sampler="auto")
    assert isinstance(loader.sampler, PygNeighborSampler)
    assert calls["edge_types"] == set(graph.message_types)
    assert all(v == [2, 1] for v in calls["num_neighbors"].values())
    loader.set_epoch(1)
    batch = next(iter(loader))
    assert batch.num_graphs > 0 and batch.num_edges > 0


def test_positive_edges_are_taken_out_of_the_degrees_too(graph):
    loader = LinkBatchLoader(graph, seed_edges=64, fanouts=[2], sampler="torch")
    loader.set_epoch(1)
    batch = next(iter(loader))
    # each positive arrives at one node per direction it is carried in: 2 per positive edge
    assert sum(float(v.sum()) for v in batch.degree_drop.values()) == 2 * batch.num_graphs
    from pipeline.kg.config import KGNetConfig
    from pipeline.kg.training import build_encoder

    model = build_encoder(KGNetConfig(kind="sage", hidden=8, out=8), graph)
    for t, drop in batch.degree_drop.items():
        raw = getattr(model, f"degree_{t}")[batch.n_id[t]]
        assert bool((raw - drop >= 0).all())  # never more taken out than the training graph has
