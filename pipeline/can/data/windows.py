"""Sliding windows of CAN messages as graphs, built for all windows of a file at once.

A window is ``W`` consecutive messages; windows start every ``S`` messages and only full windows
are kept (the tail remainder is dropped). In each window:

* nodes are the distinct CAN ids (ordered by raw id), so two out-of-vocabulary ids stay two nodes;
* edges run from the id of message t to the id of message t+1, deduplicated with a count
  (an id followed by itself gives a self-loop);
* the label is 1 if any message of the window is an attack.

Everything is vectorized over windows: per-row sorts of packed ``(id, position)`` keys group a
window's messages by id (and of packed ``(src, dst, position)`` keys its transitions), and
differences of running sums over the resulting contiguous runs give the per-node and per-edge
sums. Windows are processed in chunks only to bound temporary memory.

Node features (``x``, float32, names in ``NODE_FEATURES``):

    ===============  ==========================================================================
    count            messages of this id in the window / W
    byte_mean_0..7   mean of payload byte k over the id's messages / 255
    byte_std         std of each payload byte over the id's messages, averaged over bytes / 255
    dlc_mean         mean DLC / 8
    log_gap_ms       log1p(mean gap in ms between consecutive messages of the id; 0 if it occurs once)
    first_pos        position of the id's first message / W
    last_pos         position of the id's last message / W
    ===============  ==========================================================================

Edge features (``edge_attr``, float32, names in ``EDGE_FEATURES``):

    ===============  ==========================================================================
    count            transitions src -> dst in the window / (W - 1)
    log_dt_ms        log1p(mean time in ms between the two messages of those transitions)
    self_loop        1 if src and dst are the same id
    ===============  ==========================================================================

Time gaps are clamped at 0 before ``log1p`` so logs with out-of-order timestamps stay finite.

The cache is the same bits whatever the chunking and whatever the CPU: every feature comes from
integer sums (payload bytes, message counts, time gaps in nanoseconds) and elementwise IEEE
operations, never from a BLAS call or a float running sum, whose rounding depends on where a value
falls in the call.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from pipeline.can.data.readers import CanLog

FEATURE_VERSION = 2
"""Bump when a feature's definition changes: it is part of the cache key."""
NODE_FEATURES = ("count", *(f"byte_mean_{k}" for k in range(8)), "byte_std", "dlc_mean", "log_gap_ms",
                 "first_pos", "last_pos")
EDGE_FEATURES = ("count", "log_dt_ms", "self_loop")
CHUNK_WINDOWS = 1 << 15
"""Windows processed per vectorized step; bounds temporaries to a few hundred MB at W=100."""


def fit_vocab(ids: Iterable[np.ndarray]) -> np.ndarray:
    """Sorted unique CAN ids (uint32); id ``vocab[i]`` gets index i+1, index 0 is out-of-vocabulary."""
    parts = [np.unique(np.asarray(a, dtype=np.uint32)) for a in ids]
    if not parts:
        return np.zeros(0, dtype=np.uint32)
    return np.unique(np.concatenate(parts)).astype(np.uint32)


def vocab_index(raw_ids: np.ndarray | torch.Tensor, vocab: np.ndarray) -> np.ndarray:
    """Map raw CAN ids to vocabulary indices (0 = out of vocabulary)."""
    raw = np.asarray(raw_ids, dtype=np.int64)
    vocab = np.asarray(vocab, dtype=np.int64)
    if vocab.size == 0:
        return np.zeros(raw.shape, dtype=np.int64)
    pos = np.searchsorted(vocab, raw)
    found = vocab[np.minimum(pos, vocab.size - 1)] == raw
    return np.where(found, pos + 1, 0).astype(np.int64)


def num_windows(rows: int, window: int, stride: int) -> int:
    return 0 if rows < window else (rows - window) // stride + 1


def build_graphs(log: CanLog, vocab: np.ndarray, window: int, stride: int | None = None,
                 row_slice: slice = slice(None), source: int = 0) -> dict[str, torch.Tensor]:
    """Window graphs of ``log[row_slice]`` in the cache split format (see pipeline.can.data.cache)."""
    graphs = build_graphs_raw(log, window, stride, row_slice, source)
    return with_vocab(graphs, vocab)


def with_vocab(graphs: dict[str, torch.Tensor], vocab: np.ndarray) -> dict[str, torch.Tensor]:
    """Replace the raw ``node_can_id`` of ``build_graphs_raw`` output by vocabulary ``node_id``."""
    out = {k: v for k, v in graphs.items() if k != "node_can_id"}
    out["node_id"] = torch.from_numpy(vocab_index(graphs["node_can_id"].numpy(), vocab))
    return out


def build_graphs_raw(log: CanLog, window: int, stride: int | None = None, row_slice: slice = slice(None),
                     source: int = 0) -> dict[str, torch.Tensor]:
    """Like ``build_graphs`` but with raw CAN ids per node (``node_can_id``), before any vocabulary.

    The vocabulary is fit on the train split only, which is known once every train file has been
    read; keeping raw ids lets each file be windowed (and its log freed) as soon as it is read.
    """
    stride = stride or window
    if window < 2 or stride < 1:
        raise ValueError(f"window must be >= 2 and stride >= 1 (got {window}, {stride})")
    start, stop, step = row_slice.indices(len(log))
    if step != 1:
        raise ValueError("row_slice must be contiguous")
    total = num_windows(max(stop - start, 0), window, stride)
    parts = []
    for first in range(0, total, CHUNK_WINDOWS):
        count = min(CHUNK_WINDOWS, total - first)
        starts = start + (first + np.arange(count, dtype=np.int64)) * stride
        parts.append(_window_chunk(log, starts, window, stride))
    graphs = concat_graphs(parts) if parts else empty_graphs(raw=True)
    graphs["source"] = torch.full((graphs["y"].shape[0],), source, dtype=torch.int64)
    return graphs


def empty_graphs(raw: bool = False, node_features: int = len(NODE_FEATURES)) -> dict[str, torch.Tensor]:
    out = {
        "x": torch.zeros((0, node_features), dtype=torch.float32),
        "edge_index": torch.zeros((2, 0), dtype=torch.int32),
        "edge_attr": torch.zeros((0, len(EDGE_FEATURES)), dtype=torch.float32),
        "y": torch.zeros(0, dtype=torch.int64),
        "node_ptr": torch.zeros(1, dtype=torch.int64),
        "edge_ptr": torch.zeros(1, dtype=torch.int64),
        "source": torch.zeros(0, dtype=torch.int64),
        "start_row": torch.zeros(0, dtype=torch.int64),
    }
    out["node_can_id" if raw else "node_id"] = torch.zeros(0, dtype=torch.int64)
    return out


def concat_graphs(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate split dicts, shifting the offset arrays; edge indices are local and stay as they are."""
    parts = [p for p in parts if p["y"].shape[0] > 0] or list(parts[:1])
    if len(parts) == 1:
        return dict(parts[0])
    out: dict[str, torch.Tensor] = {}
    for key in parts[0]:
        if key in ("node_ptr", "edge_ptr"):
            pieces, base = [torch.zeros(1, dtype=torch.int64)], 0
            for p in parts:
                pieces.append(p[key][1:] + base)
                base += int(p[key][-1])
            out[key] = torch.cat(pieces)
        else:
            out[key] = torch.cat([p[key] for p in parts], dim=1 if key == "edge_index" else 0)
    return out


# -- the vectorized core ------------------------------------------------------------------------

def _window_chunk(log: CanLog, starts: np.ndarray, window: int, stride: int) -> dict[str, torch.Tensor]:
    """Graphs for windows beginning at rows ``starts`` (a chunk), all at once."""
    nw, w = starts.shape[0], window
    lo, hi = int(starts[0]), int(starts[-1]) + w
    if stride == window:
        ids = log.can_id[lo:hi].reshape(nw, w)
        labels = log.label[lo:hi].reshape(nw, w)
    else:
        gather = starts[:, None] + np.arange(w, dtype=np.int64)
        ids, labels = log.can_id[gather], log.label[gather]
    offset = (starts - lo)[:, None]  # first row of each window, relative to lo

    # Group each window's messages by id: sort (id, position) packed in one int64 per message.
    pbits = _bits(w - 1)
    key = (ids.astype(np.int64) << pbits) | np.arange(w, dtype=np.int64)
    key.sort(axis=1)
    pos = (key & ((1 << pbits) - 1)).astype(np.int32)
    sid = key >> pbits
    first = np.empty((nw, w), dtype=bool)
    first[:, 0] = True
    np.not_equal(sid[:, 1:], sid[:, :-1], out=first[:, 1:])
    local = np.cumsum(first, axis=1, dtype=np.int32)
    local -= 1
    nodes_per_graph = local[:, -1].astype(np.int64) + 1

    node_start = np.flatnonzero(first)
    node_count = np.diff(node_start, append=nw * w)
    grow = (offset + pos).ravel()
    x = _node_features(log, lo, hi, grow, node_start, node_count, pos.ravel(), w)
    node_can_id = sid.ravel()[node_start]

    # Message -> local node id, in time order, then transitions t -> t+1.
    msg_node = np.empty((nw, w), dtype=np.int32)
    np.put_along_axis(msg_node, pos, local, axis=1)
    edge_index, edge_attr, edges_per_graph = _edges(log, lo, hi, offset, msg_node, w)

    return {
        "x": torch.from_numpy(x),
        "node_can_id": torch.from_numpy(node_can_id),
        "edge_index": torch.from_numpy(edge_index),
        "edge_attr": torch.from_numpy(edge_attr),
        "y": torch.from_numpy(labels.max(axis=1).astype(np.int64)),
        "node_ptr": torch.from_numpy(_ptr(nodes_per_graph)),
        "edge_ptr": torch.from_numpy(_ptr(edges_per_graph)),
        "start_row": torch.from_numpy(starts.astype(np.int64)),
    }


def _node_features(log: CanLog, lo: int, hi: int, grow: np.ndarray, node_start: np.ndarray,
                   node_count: np.ndarray, pos: np.ndarray, w: int) -> np.ndarray:
    """Per-node features from messages grouped by node (``grow`` = row - lo of each grouped message)."""
    n = node_start.shape[0]
    node_end = node_start + node_count - 1
    count = node_count.astype(np.float32)
    sums, sqsums = _byte_sums(log.payload[lo:hi], grow, node_end, w)
    # count^2 * variance = count * sum(b^2) - sum(b)^2: exact in unsigned integers (never negative).
    spread = np.multiply(sqsums, node_count.astype(np.uint64)[:, None], dtype=np.uint64)
    spread -= np.square(sums, dtype=np.uint64)
    std = row_sums(np.sqrt(spread.astype(np.float64))) / (node_count * float(8 * 255))
    dlc_sum = _segment_sums(log.dlc[lo:hi][grow], node_end, np.int32)
    ts = log.ts[lo:hi]
    first_row, last_row = grow[node_start], grow[node_end]
    gap_ms = (ts[last_row] - ts[first_row]) * 1000.0 / np.maximum(node_count - 1, 1)
    x = np.empty((n, len(NODE_FEATURES)), dtype=np.float32)
    x[:, 0] = count / np.float32(w)
    np.multiply(sums, (np.float32(1.0 / 255.0) / count)[:, None], out=x[:, 1:9])
    x[:, 9] = std
    x[:, 10] = dlc_sum / (count * np.float32(8))
    x[:, 11] = _log1p(gap_ms)
    x[:, 12] = pos[node_start] / np.float32(w)
    x[:, 13] = pos[node_end] / np.float32(w)
    return x


def _byte_sums(payload: np.ndarray, grow: np.ndarray, seg_end: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment sums and sums of squares of each payload byte, [n, 8] each (unsigned integers).

    A message's 8 bytes are gathered as one uint64, widened to 16-bit (sums) or 32-bit (squares)
    lanes and segment-summed as 2 or 4 uint64 columns: several times faster than summing 8 byte
    columns. Lanes cannot overflow while a segment holds at most 257 messages (a node has at most
    W); longer windows take the plain 64-bit path.
    """
    grouped = payload.view(np.uint64).reshape(-1)[grow].view(np.uint8).reshape(-1, 8)
    if w > 257:
        wide = grouped.astype(np.uint64)
        return _segment_sums(wide, seg_end), _segment_sums(wide * wide, seg_end)
    sums = _segment_sums(grouped.astype(np.uint16).view(np.uint64), seg_end).view(np.uint16)
    sqsums = _segment_sums(np.square(grouped, dtype=np.uint32).view(np.uint64), seg_end).view(np.uint32)
    return sums, sqsums


def row_sums(values: np.ndarray) -> np.ndarray:
    """Sums over the columns of a small [n, k] float array, added left to right one column at a time.

    Every step is one elementwise IEEE addition, so a row's sum is the same bits wherever the row
    falls and whatever the CPU; a matrix-vector product goes through BLAS, whose kernels round
    differently with the row's position in the call and from one CPU to the next.
    """
    total = values[:, 0].copy()
    for j in range(1, values.shape[1]):
        total += values[:, j]
    return total


def _segment_sums(values: np.ndarray, seg_end: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """Sums of consecutive runs of ``values`` (1-D or per column) that end at rows ``seg_end``.

    The runs tile the rows, so a run's sum is a difference of the running sum at its end and at the
    previous run's end. Unsigned running sums may wrap around; the differences are still exact
    (modular arithmetic), and so is each packed lane as long as the run's own sum fits in it.
    Cheaper than ``np.add.reduceat``, which pays per run.
    """
    if values.ndim == 2:  # column by column: a 1-D running sum is several times faster than axis=0
        out = np.empty((seg_end.shape[0], values.shape[1]), dtype=dtype or values.dtype)
        for j in range(values.shape[1]):
            out[:, j] = _segment_sums(values[:, j], seg_end, dtype)
        return out
    running = np.cumsum(values, dtype=dtype)[seg_end]
    running[1:] -= running[:-1].copy()
    return running


def _log1p(values: np.ndarray) -> np.ndarray:
    """log(1 + max(v, 0)), computed in float64 and rounded to float32 once.

    ``np.log`` is vectorized where ``np.log1p`` is not, and the features need no more than float32
    precision near 0. Its float32 SIMD kernels differ between CPUs by an ulp; in float64 those
    differences almost never survive the final rounding.
    """
    return np.log(np.maximum(values, 0.0).astype(np.float64) + 1.0).astype(np.float32)


def _edges(log: CanLog, lo: int, hi: int, offset: np.ndarray, msg_node: np.ndarray,
           w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deduplicated transitions per window: local edge_index [2, E], edge_attr [E, 3], edges per graph."""
    nw = msg_node.shape[0]
    nbits, tbits = _bits(w - 1), _bits(w - 2)
    wide = np.int64 if 2 * nbits + tbits > 31 else np.int32
    # Pack (src, dst, t) so one per-row sort groups equal transitions and keeps their positions.
    key = (msg_node[:, :-1].astype(wide) << (nbits + tbits)) | (msg_node[:, 1:].astype(wide) << tbits)
    key |= np.arange(w - 1, dtype=wide)
    key.sort(axis=1)
    t = key & ((1 << tbits) - 1)
    pair = key >> tbits
    first = np.empty(pair.shape, dtype=bool)
    first[:, 0] = True
    np.not_equal(pair[:, 1:], pair[:, :-1], out=first[:, 1:])
    edges_per_graph = first.sum(axis=1, dtype=np.int64)
    edge_start = np.flatnonzero(first)
    edge_count = np.diff(edge_start, append=nw * (w - 1))
    upair = pair.ravel()[edge_start]
    src, dst = upair >> nbits, upair & ((1 << nbits) - 1)
    # Time between message t and t+1 of the window, gathered in grouped order.
    # Summed in integer nanoseconds: a float running sum rounds differently with the edge's place in
    # the chunk, an integer one is exact, so the feature does not depend on how windows are chunked.
    gaps_ns = np.rint(np.diff(log.ts[lo:hi]) * 1e9).astype(np.int64)
    dt_sum_ns = _segment_sums(gaps_ns[(offset + t).ravel()], edge_start + edge_count - 1)
    edge_attr = np.empty((edge_start.shape[0], len(EDGE_FEATURES)), dtype=np.float32)
    edge_attr[:, 0] = edge_count.astype(np.float32) / np.float32(w - 1)
    edge_attr[:, 1] = _log1p(dt_sum_ns / (edge_count * 1e6))
    edge_attr[:, 2] = src == dst
    edge_index = np.empty((2, edge_start.shape[0]), dtype=np.int32)
    edge_index[0], edge_index[1] = src, dst
    return edge_index, edge_attr, edges_per_graph


def _bits(value: int) -> int:
    return max(int(value).bit_length(), 1)


def _ptr(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out
