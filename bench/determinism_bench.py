"""The graph cache is the same bits however its windows are chunked.

Builds the full hcrl_sa cache twice in one process, with the default ``CHUNK_WINDOWS`` and with a
small odd chunk, and compares a content hash of every split (each tensor's name, dtype, shape and
bytes). Features are computed with elementwise IEEE operations and integer sums only, so the two
must agree bit for bit on any CPU; before that, a BLAS row sum and float running sums made them
differ in the last bits.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.data_bench import _quiet_logger, row
from pipeline.can.data import windows
from pipeline.config import DATA_ROOT_ENV, PROJECT_ROOT, load_profile

DATASET = "can-train-and-test/hcrl_sa"
SMALL_CHUNK = 97


def split_hashes(cache_dir: Path) -> dict[str, str]:
    """sha256 of each ``<split>.pt``'s tensors, independent of how torch serialised them."""
    out = {}
    for path in sorted(cache_dir.glob("*.pt")):
        tensors = torch.load(path, mmap=True, weights_only=True)
        digest = hashlib.sha256()
        for name in sorted(tensors):
            t = tensors[name].contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.numpy().tobytes())
        out[path.stem] = digest.hexdigest()
    return out


def cache_content_hash(chunk: int, cache_root: Path) -> dict[str, str]:
    from pipeline.can.data.build import preprocess

    root = os.environ.get(DATA_ROOT_ENV) or str(PROJECT_ROOT / ".." / "shared" / "data")
    profile = load_profile("hcrl_sa", [f"data_root={root}", f"data.cache_dir={cache_root}"])
    default = windows.CHUNK_WINDOWS
    windows.CHUNK_WINDOWS = chunk
    try:
        summary = preprocess(profile, _quiet_logger())
    finally:
        windows.CHUNK_WINDOWS = default
    return split_hashes(Path(summary["cache_dir"]))


def cache_determinism() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-determinism-") as a, \
            tempfile.TemporaryDirectory(prefix="bench-determinism-") as b:
        whole = cache_content_hash(windows.CHUNK_WINDOWS, Path(a))
        small = cache_content_hash(SMALL_CHUNK, Path(b))
    same = sum(whole[name] == small.get(name) for name in whole)
    combined = hashlib.sha256("".join(whole[n] for n in sorted(whole)).encode()).hexdigest()[:16]
    return [
        row("cache_determinism", f"hcrl_sa splits identical, chunk {windows.CHUNK_WINDOWS} vs {SMALL_CHUNK}",
            f"{same}/{len(whole)}", f"{len(whole)}/{len(whole)}", same == len(whole) and set(whole) == set(small)),
        row("cache_determinism", "hcrl_sa cache content hash (sha256, first 16)", combined),
    ]
