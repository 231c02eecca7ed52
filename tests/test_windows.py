"""Windowing: a hand-computed example, and the vectorized builder against a per-window reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.can.data.cache import GraphSplit, save_split
from pipeline.can.data.readers import CanLog
from pipeline.can.data.windows import (
    EDGE_FEATURES,
    NODE_FEATURES,
    build_graphs,
    build_graphs_raw,
    concat_graphs,
    fit_vocab,
    num_windows,
    with_vocab,
)

A, B, C, D = 0x100, 0x200, 0x300, 0x7FF


def make_log(ids, ts=None, payload=None, dlc=None, label=None) -> CanLog:
    n = len(ids)
    return CanLog(
        ts=np.asarray(ts if ts is not None else np.arange(n) * 0.001, dtype=np.float64),
        can_id=np.asarray(ids, dtype=np.uint32),
        dlc=np.asarray(dlc if dlc is not None else [8] * n, dtype=np.uint8),
        payload=np.asarray(payload if payload is not None else np.zeros((n, 8)), dtype=np.uint8),
        label=np.asarray(label if label is not None else [0] * n, dtype=np.uint8),
    )


def graph(g: dict, i: int) -> dict:
    """Graph ``i`` of a split dict as plain Python values."""
    n0, n1 = int(g["node_ptr"][i]), int(g["node_ptr"][i + 1])
    e0, e1 = int(g["edge_ptr"][i]), int(g["edge_ptr"][i + 1])
    ids = g["node_id"] if "node_id" in g else g["node_can_id"]
    return {"ids": ids[n0:n1].tolist(), "x": g["x"][n0:n1], "edges": g["edge_index"][:, e0:e1].T.tolist(),
            "edge_attr": g["edge_attr"][e0:e1], "y": int(g["y"][i]), "start": int(g["start_row"][i])}


# -- hand-computed example ---------------------------------------------------------------------

def test_tiny_example_with_overlap():
    # Rows:        0  1  2  3  4  5  (6 is the dropped tail)
    ids = [A, B, A, A, C, B, A]
    ts = [0.0, 0.001, 0.003, 0.004, 0.010, 0.011, 0.020]
    payload = np.zeros((7, 8))
    payload[:, 0] = [10, 20, 30, 50, 0, 40, 0]
    label = [0, 0, 0, 0, 0, 1, 0]
    log = make_log(ids, ts, payload, dlc=[8, 4, 8, 8, 2, 4, 8], label=label)
    vocab = fit_vocab([np.array([B, A, A])])
    assert vocab.tolist() == [A, B]
    g = build_graphs(log, vocab, window=4, stride=2)
    assert len(g["y"]) == num_windows(7, 4, 2) == 2
    assert g["edge_index"].dtype == torch.int32 and g["x"].dtype == torch.float32
    assert g["node_ptr"].tolist() == [0, 2, 5] and g["edge_ptr"].tolist() == [0, 3, 6]

    w0 = graph(g, 0)  # rows 0-3: A B A A
    assert w0["ids"] == [1, 2] and w0["y"] == 0 and w0["start"] == 0
    assert sorted(map(tuple, w0["edges"])) == [(0, 0), (0, 1), (1, 0)]  # A->A, A->B, B->A
    a = w0["x"][0].tolist()
    assert a[0] == pytest.approx(3 / 4)                      # count / W
    assert a[1] == pytest.approx(30 / 255)                   # mean of byte 0 (10, 30, 50)
    assert a[9] == pytest.approx(np.std([10, 30, 50]) / 255 / 8, rel=1e-5)  # only byte 0 varies
    assert a[10] == pytest.approx(1.0)                       # dlc 8 / 8
    assert a[11] == pytest.approx(math.log1p(2.0))           # gaps 3 ms and 1 ms -> mean 2 ms
    assert a[12:] == pytest.approx([0.0, 3 / 4])             # first / last position
    b = w0["x"][1].tolist()
    assert b[0] == pytest.approx(1 / 4) and b[9] == 0 and b[10] == pytest.approx(0.5) and b[11] == 0
    np.testing.assert_allclose(w0["edge_attr"].numpy(), [[1 / 3, math.log1p(1.0), 1],   # A->A: 3->4 ms
                                                         [1 / 3, math.log1p(1.0), 0],   # A->B: 0->1 ms
                                                         [1 / 3, math.log1p(2.0), 0]],  # B->A: 1->3 ms
                               rtol=1e-6)

    w1 = graph(g, 1)  # rows 2-5: A A C B, C out of vocabulary
    assert w1["ids"] == [1, 2, 0] and w1["y"] == 1 and w1["start"] == 2
    assert w1["edges"] == [[0, 0], [0, 2], [2, 1]]  # A->A, A->C, C->B (sorted by src, dst)


def test_out_of_vocabulary_ids_stay_distinct_nodes():
    log = make_log([C, D, C, A])
    g = build_graphs(log, np.array([A], dtype=np.uint32), window=4)
    assert g["node_id"].tolist() == [1, 0, 0]  # A, C, D: two OOV nodes, not one
    assert g["edge_index"].T.tolist() == [[1, 0], [1, 2], [2, 1]]  # C->A, C->D, D->C


def test_short_log_gives_no_windows():
    g = build_graphs(make_log([A, B]), np.array([A]), window=3)
    assert len(g["y"]) == 0 and g["node_ptr"].tolist() == [0] and g["x"].shape == (0, len(NODE_FEATURES))


def test_features_stay_finite_with_unordered_timestamps():
    log = make_log([A, B, A, B], ts=[5.0, 1.0, 0.5, 9.0])
    g = build_graphs(log, np.array([A, B]), window=4)
    assert torch.isfinite(g["x"]).all() and torch.isfinite(g["edge_attr"]).all()


# -- brute-force reference -----------------------------------------------------------------------

def reference(log: CanLog, vocab: np.ndarray, window: int, stride: int, start: int, stop: int) -> list[dict]:
    """Each window on its own, with plain loops: the definition the vectorized code must match."""
    out = []
    vocab_index = {int(v): i + 1 for i, v in enumerate(vocab)}
    for s in range(start, stop - window + 1, stride):
        rows = list(range(s, s + window))
        ids = sorted({int(log.can_id[r]) for r in rows})
        local = {cid: i for i, cid in enumerate(ids)}
        x = []
        for cid in ids:
            mine = [r for r in rows if log.can_id[r] == cid]
            pay = log.payload[mine].astype(np.float64)
            times = log.ts[mine]
            gap = (times[-1] - times[0]) * 1000 / (len(mine) - 1) if len(mine) > 1 else 0.0
            x.append([len(mine) / window, *(pay.mean(0) / 255), pay.std(0).mean() / 255,
                      log.dlc[mine].mean() / 8, math.log1p(max(gap, 0.0)),
                      (mine[0] - s) / window, (mine[-1] - s) / window])
        edges: dict[tuple[int, int], list[float]] = {}
        for r in rows[:-1]:
            key = (local[int(log.can_id[r])], local[int(log.can_id[r + 1])])
            edges.setdefault(key, []).append(log.ts[r + 1] - log.ts[r])
        keys = sorted(edges)
        out.append({
            "ids": [vocab_index.get(c, 0) for c in ids], "x": np.array(x),
            "edges": [list(k) for k in keys],
            "edge_attr": np.array([[len(edges[k]) / (window - 1),
                                    math.log1p(max(np.mean(edges[k]) * 1000, 0.0)), float(k[0] == k[1])]
                                   for k in keys]).reshape(-1, 3),
            "y": int(log.label[rows].max()), "start": s,
        })
    return out


def random_log(rng: np.random.Generator, n: int, n_ids: int) -> CanLog:
    ids = rng.choice(rng.integers(0, 1 << 29, n_ids), size=n)
    ts = np.cumsum(rng.exponential(0.0005, n)) + 1.6e9
    return make_log(ids, ts, rng.integers(0, 256, (n, 8)), rng.integers(0, 9, n), (rng.random(n) < 0.02))


@pytest.mark.parametrize("window,stride,rows", [(10, 10, (0, 537)), (10, 3, (5, 500)), (7, 7, (0, 100)),
                                                (16, 1, (0, 200)), (300, 150, (0, 1000))])
def test_matches_per_window_reference(window, stride, rows):
    rng = np.random.default_rng(window * 100 + stride)
    log = random_log(rng, 1000, 12)
    vocab = fit_vocab([log.can_id[:400]])[:-2]  # leave some ids out of vocabulary
    got = build_graphs(log, vocab, window, stride, slice(*rows), source=3)
    want = reference(log, vocab, window, stride, *rows)
    assert len(got["y"]) == len(want) == num_windows(rows[1] - rows[0], window, stride)
    assert (got["source"] == 3).all()
    for i, ref in enumerate(want):
        mine = graph(got, i)
        assert mine["ids"] == ref["ids"] and mine["edges"] == ref["edges"]
        assert mine["y"] == ref["y"] and mine["start"] == ref["start"]
        np.testing.assert_allclose(mine["x"].numpy(), ref["x"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mine["edge_attr"].numpy(), ref["edge_attr"], rtol=1e-5, atol=1e-6)


def test_chunked_build_equals_single_pass(monkeypatch):
    log = random_log(np.random.default_rng(1), 2000, 30)
    whole = build_graphs_raw(log, 10, 4)
    monkeypatch.setattr("pipeline.can.data.windows.CHUNK_WINDOWS", 7)
    chunked = build_graphs_raw(log, 10, 4)
    for key in whole:
        assert torch.equal(whole[key], chunked[key]), key


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_long_log_is_bit_identical_whatever_the_chunking(monkeypatch, chunk):
    # Long enough that a BLAS row sum or a float running sum over a chunk would round some
    # features differently from the single pass (both did before they were replaced).
    log = random_log(np.random.default_rng(5), 60_000, 40)
    whole = build_graphs_raw(log, 10, 4)
    monkeypatch.setattr("pipeline.can.data.windows.CHUNK_WINDOWS", chunk)
    chunked = build_graphs_raw(log, 10, 4)
    for key in whole:
        assert torch.equal(whole[key], chunked[key]), key


def test_a_window_built_alone_equals_the_same_window_in_a_long_build():
    log = random_log(np.random.default_rng(6), 60_000, 40)
    whole = build_graphs_raw(log, 20, 20)
    for i in (0, 1234, 2999):
        alone = build_graphs_raw(log, 20, 20, slice(20 * i, 20 * i + 20))
        n0, n1 = int(whole["node_ptr"][i]), int(whole["node_ptr"][i + 1])
        e0, e1 = int(whole["edge_ptr"][i]), int(whole["edge_ptr"][i + 1])
        assert torch.equal(whole["x"][n0:n1], alone["x"])
        assert torch.equal(whole["edge_attr"][e0:e1], alone["edge_attr"])


def test_output_is_a_valid_cache_split(tmp_path):
    log = random_log(np.random.default_rng(2), 800, 20)
    vocab = fit_vocab([log.can_id])
    parts = [build_graphs_raw(log, 20, 20, slice(0, 400), source=0), build_graphs_raw(log, 20, 20, slice(400, 800), source=1)]
    split = with_vocab(concat_graphs(parts), vocab)
    assert split.keys() == {"x", "node_id", "edge_index", "edge_attr", "y", "node_ptr", "edge_ptr", "source", "start_row"}
    assert split["x"].shape[1] == len(NODE_FEATURES) and split["edge_attr"].shape[1] == len(EDGE_FEATURES)
    save_split(split, tmp_path / "s.pt")
    opened = GraphSplit.open(tmp_path / "s.pt")
    assert len(opened) == 40 and opened.t["source"].tolist() == [0] * 20 + [1] * 20
    batch = opened.collate(torch.tensor([0, 25]))
    assert batch.num_graphs == 2 and int(batch.edge_index.max()) < batch.num_nodes
    one = build_graphs(log, vocab, 20, 20, slice(500, 520))
    n = int(one["node_ptr"][-1])
    assert torch.equal(batch.x[-n:], one["x"])
