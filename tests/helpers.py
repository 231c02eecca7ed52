"""Tiny synthetic graph caches in the preprocess stage's format, for tests that must not read raw data.

The label rule is learnable but not a single feature threshold: an attack window contains the
"injected" CAN id (vocabulary index 1) and that node's first feature is shifted. A GAT learns it
in a few epochs; a constant predictor scores F1 0 or ~0.5.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline import io
from pipeline.can.data.cache import save_split
from pipeline.config import Profile, load_profile
from pipeline.runner import fingerprint_for
from pipeline.runs import RunDir

VOCAB = [0x100 + i for i in range(12)]
NODE_FEATURES = ["rate", "dt_mean", "dt_std"]
EDGE_FEATURES = ["count", "dt_mean"]
ATTACK_ID = 1


def synthetic_split(num_graphs: int, attack_rate: float = 0.4, seed: int = 0,
                    min_nodes: int = 3, max_nodes: int = 8) -> dict[str, torch.Tensor]:
    """Flat split tensors of ``num_graphs`` random window graphs (a test-data builder, not a hot path)."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(num_graphs, generator=g) < attack_rate).long()
    xs, ids, edges, eattr, n_counts, e_counts = [], [], [], [], [], []
    for label in y.tolist():
        n = int(torch.randint(min_nodes, max_nodes + 1, (1,), generator=g))
        node_id = torch.randperm(len(VOCAB) - 1, generator=g)[:n] + 2  # normal ids are 2..len(VOCAB)
        x = torch.randn(n, len(NODE_FEATURES), generator=g)
        if label:
            node_id[0] = ATTACK_ID
            x[0, 0] += 3.0
        src = torch.arange(n - 1)
        extra = torch.randint(0, n, (2, n), generator=g)
        ei = torch.cat([torch.stack([src, src + 1]), extra], dim=1)
        xs.append(x)
        ids.append(node_id)
        edges.append(ei.int())
        eattr.append(torch.rand(ei.shape[1], len(EDGE_FEATURES), generator=g))
        n_counts.append(n)
        e_counts.append(ei.shape[1])
    return {
        "x": torch.cat(xs), "node_id": torch.cat(ids).long(), "edge_index": torch.cat(edges, dim=1),
        "edge_attr": torch.cat(eattr), "y": y,
        "node_ptr": _ptr(n_counts), "edge_ptr": _ptr(e_counts),
        "source": torch.zeros(num_graphs, dtype=torch.long), "start_row": torch.arange(num_graphs) * 100,
    }


def write_synthetic_cache(root: str | Path, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A cache dir with manifest.json plus train, val and two scenario splits; returns the dir."""
    root = Path(root)
    sizes = sizes or {"train": 240, "val": 80, "test_01_known": 60, "test_02_unknown": 60}
    splits = {}
    for i, (name, count) in enumerate(sizes.items()):
        tensors = synthetic_split(count, seed=seed * 100 + i)
        save_split(tensors, root / f"{name}.pt")
        hist = torch.bincount(tensors["y"], minlength=2).tolist()
        splits[name] = {"file": f"{name}.pt", "graphs": count, "labels": {"0": hist[0], "1": hist[1]}}
    io.write_json(root / "manifest.json", {
        "vocab": VOCAB, "node_features": NODE_FEATURES, "edge_features": EDGE_FEATURES, "splits": splits,
        "scenarios": sorted(k for k in sizes if k not in ("train", "val")),
    })
    return root


def tiny_profile(overrides: list[str] | None = None) -> Profile:
    """The local profile shrunk to seconds of CPU time."""
    base = ["model.hidden=8", "model.heads=2", "model.layers=2", "model.id_embed_dim=8", "model.mlp_hidden=16",
            "train.epochs=4", "train.batch_size=32", "train.lr=0.01", "train.threads=1"]
    return load_profile("local", base + list(overrides or []), check_paths=False)


def run_with_cache(tmp_path: Path, profile: Profile, cache_dir: Path) -> RunDir:
    """A run dir whose preprocess stage is marked done, pointing at ``cache_dir``."""
    run = RunDir.create(profile, root=tmp_path / "runs", run_id="r")
    fingerprint = fingerprint_for(run, profile, "preprocess")
    run.mark_done("preprocess", fingerprint, {"cache_dir": str(Path(cache_dir).resolve()), "result_key": "synthetic"})
    return run


def _ptr(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(torch.tensor(counts), 0)])
