"""Per-capture score normalisation: each window's score standardised against its own capture's scores.

``normalise_scores`` maps a score ``s`` of capture ``g`` to ``(s - median_g) / scale_g`` with
``scale_g = 1.4826 * MAD_g`` (the median absolute deviation from the median, scaled so that it
estimates the standard deviation of normal data). The statistics come from the capture's own windows
(``median_mad``) or only from its first windows, taken as a benign warm-up (``warmup``). When the MAD
is 0 (more than half the reference scores equal) the scale falls back to ``IQR / 1.349`` and, when that
is 0 too (constant scores), to 1: the output is always finite and a constant capture maps to 0.

It reads no label: the function takes scores and capture ids only, positionally, so no label can be
passed to it. It is transductive all the same: a capture's normalised scores depend on the whole
capture (or its warm-up), which a detector running online would see only as it goes.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Method = Literal["none", "median_mad", "warmup"]
METHODS: tuple[str, ...] = ("none", "median_mad", "warmup")
MAD_TO_SIGMA = 1.4826
"""1 / Phi^-1(3/4): makes the MAD a consistent estimate of a normal distribution's standard deviation."""
IQR_TO_SIGMA = 1.349
"""Phi^-1(3/4) - Phi^-1(1/4): the interquartile range of a unit normal distribution."""


def normalise_scores(scores: np.ndarray, groups: np.ndarray, method: str, warmup_mask: np.ndarray | None = None,
                     /) -> np.ndarray:
    """``scores`` standardised per group (capture) by the median and MAD of that group's reference
    windows: all of them for ``median_mad``, those where ``warmup_mask`` is true for ``warmup``;
    ``none`` returns the scores unchanged (as float64). Every group needs at least one reference window."""
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups)
    if s.ndim != 1 or g.shape != s.shape:
        raise ValueError(f"scores and groups must be 1-D of one length, got {s.shape} and {g.shape}")
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r} (one of {METHODS})")
    if method == "none" or s.size == 0:
        return s.copy()
    if method == "warmup":
        if warmup_mask is None:
            raise ValueError("warmup normalisation needs a warmup_mask")
        reference = np.asarray(warmup_mask, dtype=bool)
        if reference.shape != s.shape:
            raise ValueError(f"warmup_mask has shape {reference.shape}, scores {s.shape}")
    else:
        reference = np.ones(s.shape, dtype=bool)
    ids, inverse = np.unique(g, return_inverse=True)
    inverse = inverse.reshape(-1)
    ref_ids = inverse[reference]
    if np.bincount(ref_ids, minlength=ids.size).min() == 0:
        missing = ids[np.bincount(ref_ids, minlength=ids.size) == 0]
        raise ValueError(f"group(s) {missing.tolist()} have no reference window")
    ref = s[reference]
    median = _group_quantile(ref, ref_ids, ids.size, 0.5)
    mad = _group_quantile(np.abs(ref - median[ref_ids]), ref_ids, ids.size, 0.5)
    iqr = _group_quantile(ref, ref_ids, ids.size, 0.75) - _group_quantile(ref, ref_ids, ids.size, 0.25)
    scale = np.where(mad > 0, MAD_TO_SIGMA * mad, np.where(iqr > 0, iqr / IQR_TO_SIGMA, 1.0))
    return (s - median[inverse]) / scale[inverse]


def warmup_windows(groups: np.ndarray, order: np.ndarray, count: int) -> np.ndarray:
    """True for the first ``count`` windows of each group by ``order`` (a window's start row in its
    capture); every window of a group shorter than that."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    g, o = np.asarray(groups), np.asarray(order)
    if g.shape != o.shape or g.ndim != 1:
        raise ValueError(f"groups and order must be 1-D of one length, got {g.shape} and {o.shape}")
    mask = np.zeros(g.shape, dtype=bool)
    if g.size == 0:
        return mask
    _, inverse = np.unique(g, return_inverse=True)
    inverse = inverse.reshape(-1)
    sort = np.lexsort((o, inverse))
    counts = np.bincount(inverse)
    starts = np.cumsum(counts) - counts
    rank = np.arange(g.size) - np.repeat(starts, counts)
    mask[sort] = rank < count
    return mask


def _group_quantile(values: np.ndarray, groups: np.ndarray, n_groups: int, q: float) -> np.ndarray:
    """Per-group ``q`` quantile of ``values`` (linear interpolation, as ``np.quantile``), without a Python loop."""
    sort = np.lexsort((values, groups))
    ordered = values[sort]
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    pos = starts + q * (counts - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.ceil(pos).astype(np.int64)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
