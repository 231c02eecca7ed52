"""Small knowledge graphs for the kg tests: hand-written edge files and tiny synthetic caches."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import PROJECT_ROOT
from pipeline.kg.cache import CacheParams, KGGraph, build_cache
from pipeline.kg.generator import generate_primekg_like
from pipeline.kg.reader import PRIMEKG_COLUMNS

SHARED = PROJECT_ROOT.parent / "shared" / "data"
FIXTURE = SHARED / "primekg" / "kg_slice.csv"
ACM = SHARED / "hetero" / "acm"

HEADER = ",".join(PRIMEKG_COLUMNS)


def primekg_row(rel: str, x: tuple[int, str, str, str], y: tuple[int, str, str, str]) -> str:
    """One kg.csv row from (index, id, type, name) of both ends."""
    return ",".join([rel, rel, str(x[0]), x[1], x[2], x[3], "", str(y[0]), y[1], y[2], y[3], ""])


def write_primekg(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "\n" + "".join(r + "\n" for r in rows))
    return path


def small_graph(tmp_path: Path, scale: float = 0.002, seed: int = 0, **params) -> KGGraph:
    """A synthetic PrimeKG-shaped cache (~260 nodes, ~16k rows at the default scale)."""
    table = generate_primekg_like(scale, seed=seed)
    out = tmp_path / f"cache-{scale}-{seed}"
    build_cache(table, CacheParams(**params), out, "test", {"generator": scale})
    return KGGraph.open(out)


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: these tests run many tiny ops, which extra threads only slow down
    (and on a shared 2-core machine, spinning OpenMP workers slow them down a lot)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
