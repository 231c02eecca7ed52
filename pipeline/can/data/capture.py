"""Id-agnostic node features: each node described against its CAN id's behaviour over its own capture.

With ``data.id_agnostic`` the models never learn which CAN id a node is. An unseen vehicle's ids
are then no evidence of attack by themselves; what a window shows is how each id departs from
what the same id does over the rest of the capture (the file the window comes from), and how
rare the id is in that capture. The vocabulary is left empty, so every node's ``node_id`` is 0.

Node features in this mode (``CAPTURE_NODE_FEATURES``; window values as in ``windows.NODE_FEATURES``):

    ===============  ==========================================================================
    count            messages of this id in the window / W
    count_excess     log(window share of the id / its share of the capture's messages)
    byte_dev_0..7    window mean of payload byte k - the id's capture mean of byte k, / 255
    byte_std_dev     window byte_std - the id's byte_std over the whole capture
    dlc_dev          (window mean DLC - the id's capture mean DLC) / 8
    log_gap_dev      window log_gap_ms - log1p(the id's mean gap in ms over the capture);
                     0 when the id occurs once in the window (no gap to compare)
    log10_share      log10 of the id's share of the capture's messages (how rare the id is)
    first_pos        position of the id's first message / W
    last_pos         position of the id's last message / W
    ===============  ==========================================================================

The capture statistics read no label, but they read the whole capture, attacks included (for a train
file, its validation block as well as its train rows): the mode is transductive in the way
per-capture score normalisation is, and the report says so.

Every statistic comes from integer sums (``np.bincount`` of uint8 values and their squares is exact
in float64 up to 2**53) and elementwise float64 operations rounded to float32 once, never from a
BLAS call or an order-dependent float sum, so chunking and thread count cannot change the cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.can.data.canlog import CanLog
from pipeline.can.data.windows import NODE_FEATURES, row_sums

CAPTURE_NODE_FEATURES = ("count", "count_excess", *(f"byte_dev_{k}" for k in range(8)), "byte_std_dev",
                         "dlc_dev", "log_gap_dev", "log10_share", "first_pos", "last_pos")
_WINDOW_COLUMN = {name: i for i, name in enumerate(NODE_FEATURES)}


def node_feature_names(id_agnostic: bool) -> tuple[str, ...]:
    """The cache's node feature columns in either mode."""
    return CAPTURE_NODE_FEATURES if id_agnostic else NODE_FEATURES


@dataclass(frozen=True)
class CaptureStats:
    """Per-id statistics of one capture, rows in the order of ``ids`` (sorted raw CAN ids)."""

    ids: np.ndarray
    """uint32 [K] the capture's distinct CAN ids, sorted."""
    share: np.ndarray
    """float64 [K] the id's messages / the capture's messages."""
    byte_mean: np.ndarray
    """float64 [K, 8] mean of each payload byte, / 255."""
    byte_std: np.ndarray
    """float64 [K] std of each payload byte averaged over the 8 bytes, / 255 (as the window feature)."""
    dlc_mean: np.ndarray
    """float64 [K] mean DLC / 8."""
    log_gap_ms: np.ndarray
    """float64 [K] log1p(mean gap in ms between consecutive messages of the id; 0 if it occurs once)."""


def capture_stats(log: CanLog) -> CaptureStats:
    """Statistics of every CAN id over the whole of ``log``, all ids at once."""
    ids, inverse, counts = np.unique(log.can_id, return_inverse=True, return_counts=True)
    k, count = ids.shape[0], counts.astype(np.float64)
    # Sums of uint8 values (and of their squares) in float64 are exact integers below 2**53 (any real
    # capture), so the order bincount adds them in does not matter.
    payload = log.payload.astype(np.float64)
    sums = np.stack([np.bincount(inverse, payload[:, j], k) for j in range(payload.shape[1])], axis=1)
    sqsums = np.stack([np.bincount(inverse, payload[:, j] ** 2, k) for j in range(payload.shape[1])], axis=1)
    spread = np.maximum(sqsums * count[:, None] - sums * sums, 0.0)
    byte_std = row_sums(np.sqrt(spread)) / (count * float(8 * 255))
    dlc_mean = np.bincount(inverse, log.dlc.astype(np.float64), k) / (count * 8.0)
    # First and last message of each id in file order: a stable sort keeps file order within an id.
    grouped = np.argsort(inverse, kind="stable")
    ends = np.cumsum(counts)
    first, last = grouped[ends - counts], grouped[ends - 1]
    gap_ms = (log.ts[last] - log.ts[first]) * 1000.0 / np.maximum(count - 1.0, 1.0)
    return CaptureStats(ids=ids.astype(np.uint32), share=count / float(max(len(log), 1)),
                        byte_mean=sums / (count[:, None] * 255.0), byte_std=byte_std, dlc_mean=dlc_mean,
                        log_gap_ms=np.log(np.maximum(gap_ms, 0.0) + 1.0))


def relative_to_capture(graphs: dict[str, torch.Tensor], stats: CaptureStats, window: int) -> dict[str, torch.Tensor]:
    """``build_graphs_raw`` output (windows of ``window`` messages) with ``x`` rewritten as
    ``CAPTURE_NODE_FEATURES`` against ``stats``.

    Every node's raw CAN id must be one of the capture's (windows come from the capture itself).
    """
    raw_ids = graphs["node_can_id"].numpy()
    row = np.searchsorted(stats.ids, raw_ids)
    if raw_ids.size and not np.array_equal(stats.ids[np.minimum(row, stats.ids.size - 1)], raw_ids):
        raise ValueError("window nodes carry CAN ids that the capture statistics do not know")
    x = graphs["x"].numpy().astype(np.float64)
    col = _WINDOW_COLUMN
    count = x[:, col["count"]]
    share = stats.share[row]
    occurs_more_than_once = np.rint(count * window) > 1
    out = np.empty((x.shape[0], len(CAPTURE_NODE_FEATURES)), dtype=np.float64)
    out[:, 0] = count
    out[:, 1] = np.log(count / share)
    out[:, 2:10] = x[:, col["byte_mean_0"]:col["byte_mean_7"] + 1] - stats.byte_mean[row]
    out[:, 10] = x[:, col["byte_std"]] - stats.byte_std[row]
    out[:, 11] = x[:, col["dlc_mean"]] - stats.dlc_mean[row]
    out[:, 12] = np.where(occurs_more_than_once, x[:, col["log_gap_ms"]] - stats.log_gap_ms[row], 0.0)
    out[:, 13] = np.log10(share)
    out[:, 14] = x[:, col["first_pos"]]
    out[:, 15] = x[:, col["last_pos"]]
    return {**graphs, "x": torch.from_numpy(out.astype(np.float32))}
