"""The heterogeneous cache: edge types, reverse edges, held-out edges, CSC adjacency, mmap, atomic build."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pipeline.config import load_profile
from pipeline.kg.build import kg_preprocess
from pipeline.kg.cache import SPLITS, CacheParams, KGGraph, build_cache
from pipeline.kg.reader import read_edges
from tests.kg_helpers import (
    primekg_row,
    single_thread,  # noqa: F401  (autouse fixture)
    small_graph,
    write_primekg,
)

D1, D2, D3 = (1, "D1", "drug", "a"), (2, "D2", "drug", "b"), (3, "D3", "drug", "c")
G1, G2 = (10, "G1", "gene", "g1"), (11, "G2", "gene", "g2")


def build(tmp_path, rows, **params):
    path = write_primekg(tmp_path / "kg.csv", rows)
    out = tmp_path / "cache"
    build_cache(read_edges(path), CacheParams(**params), out, "k", {})
    return KGGraph.open(out)


def edge_set(graph: KGGraph, k: int, split: str = "train") -> set[tuple[int, int]]:
    return set(map(tuple, graph.edges(k, split).T.tolist()))


def csc_pairs(graph: KGGraph, mt) -> set[tuple[int, int]]:
    ptr, col = graph.csc[mt]
    dst = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())
    return set(zip(col.tolist(), dst.tolist()))


def test_edge_types_directions_duplicates_and_reverse(tmp_path):
    g = build(tmp_path, [
        primekg_row("target", D1, G1),
        primekg_row("target", G1, D1),       # the same edge written backwards (PrimeKG style)
        primekg_row("target", G2, D2),       # first seen as drug->gene: oriented that way
        primekg_row("target", D1, G1),       # duplicate
        primekg_row("ddi", D1, D2),
        primekg_row("ddi", D2, D1),
        primekg_row("ddi", D3, D3),          # self-loop
    ], val_fraction=0, test_fraction=0)
    names = [(e["src"], e["rel"], e["dst"]) for e in g.edge_types]
    assert names == [("drug", "target", "gene"), ("drug", "ddi", "drug")]
    assert g.manifest["dropped"]["self_loops"] == 1
    assert g.manifest["dropped"]["duplicate_rows"] == 3
    target, ddi = g.edge_types
    assert target["train"] == 2 and ddi["train"] == 1
    messages = {(m["rel"], m["direction"]) for m in g.manifest["message_types"]}
    assert messages == {("target", "fwd"), ("rev_target", "rev"), ("ddi", "sym")}
    # the symmetric drug-drug message type carries both directions; the node D3 (only a loop) is gone
    sym = next(mt for mt, d in g.messages_of(1) if d == "sym")
    assert len(csc_pairs(g, sym)) == 2
    assert g.num_nodes[target["src_alias"]] == 2


def test_csc_matches_train_edges_in_both_directions(tmp_path):
    g = small_graph(tmp_path)
    for k in range(len(g.edge_types)):
        train = edge_set(g, k)
        for mt, direction in g.messages_of(k):
            assert csc_pairs(g, mt) == messages(train, direction)


def messages(edges: set[tuple[int, int]], direction: str) -> set[tuple[int, int]]:
    back = {(v, u) for u, v in edges}
    return {"fwd": edges, "rev": back, "sym": edges | back}[direction]


def test_with_edges_puts_held_out_edges_into_the_messages(tmp_path):
    g = small_graph(tmp_path, val_fraction=0.1, test_fraction=0.2)
    assert g.with_edges(("train",)) is g
    full = g.with_edges(SPLITS)
    held_out = 0
    for k in range(len(g.edge_types)):
        train, every = edge_set(g, k), set().union(*(edge_set(g, k, s) for s in SPLITS))
        held_out += len(every - train)
        for mt, direction in g.messages_of(k):
            assert csc_pairs(full, mt) == messages(every, direction)
            assert csc_pairs(g, mt) == messages(train, direction)  # the opened cache keeps its own
            ptr, col = full.csc[mt]
            assert ptr.numel() == g.num_nodes[mt[2]] + 1 and int(ptr[-1]) == col.numel()
    assert held_out > 0


def test_held_out_edges_never_train_and_every_node_keeps_an_edge(tmp_path):
    g = small_graph(tmp_path, val_fraction=0.1, test_fraction=0.2)
    assert g.num_edges("val") > 0 and g.num_edges("test") > 0
    degree = {t: torch.zeros(n, dtype=torch.long) for t, n in g.num_nodes.items()}
    for k, e in enumerate(g.edge_types):
        train, val, test = edge_set(g, k), edge_set(g, k, "val"), edge_set(g, k, "test")
        assert not (train & val) and not (train & test) and not (val & test)
        if e["symmetric"]:  # an undirected pair is held out in both directions
            assert not ({(v, u) for u, v in val | test} & train)
        if e["train"] + e["val"] + e["test"] >= 10:
            assert e["test"] >= round(0.2 * (e["train"] + e["val"] + e["test"])) - 1
        tr = g.edges(k, "train")
        degree[e["src_alias"]] += torch.bincount(tr[0], minlength=g.num_nodes[e["src_alias"]])
        degree[e["dst_alias"]] += torch.bincount(tr[1], minlength=g.num_nodes[e["dst_alias"]])
    assert all(int(d.min()) >= 1 for d in degree.values())


def test_limit_nodes_keeps_the_most_connected(tmp_path):
    full = small_graph(tmp_path)
    limited = small_graph(tmp_path / "l", limit_nodes=60)
    assert sum(limited.num_nodes.values()) <= 60
    assert limited.num_edges("train") < full.num_edges("train")


def test_opened_arrays_are_memory_mapped(tmp_path):
    g = small_graph(tmp_path)
    ptr, col = next(iter(g.csc.values()))
    # a view of the file, not a copy: numpy reports the memmap behind the tensor
    assert isinstance(np.load(g.path / g.manifest["message_types"][0]["col"], mmap_mode="c"), np.memmap)
    assert col.dtype == torch.int64 and ptr[-1] == col.numel()
    assert g.node_table(g.node_types[0]).column_names == ["node_id", "node_name"]


def test_preprocess_builds_once_and_reuses(tmp_path, caplog):
    profile = load_profile("primekg", [f"data.cache_dir={tmp_path}"])
    log = logging.getLogger("test.kg")
    first = kg_preprocess(profile, log)
    assert first["edges"]["train"] > 0 and sum(first["nodes"].values()) == 509
    with caplog.at_level(logging.INFO, logger="test.kg"):
        again = kg_preprocess(profile, log)
    assert again == first and "nothing to do" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == [f"kg-{first['result_key']}"]  # no temporary folder left


@pytest.mark.parametrize("fractions", [(0.0, 0.0), (0.05, 0.1)])
def test_split_counts_add_up(tmp_path, fractions):
    g = small_graph(tmp_path, val_fraction=fractions[0], test_fraction=fractions[1])
    total = sum(e["train"] + e["val"] + e["test"] for e in g.edge_types)
    assert total == sum(e["train"] + e["val"] + e["test"] for e in small_graph(tmp_path / "b").edge_types)
    if fractions == (0.0, 0.0):
        assert g.num_edges("val") == g.num_edges("test") == 0
