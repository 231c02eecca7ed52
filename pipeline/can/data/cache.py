"""The graph cache: one file per split of flat tensors plus offsets, opened with mmap.

A split file is a ``torch.save`` dict of:

    x          float32 [N, F_node]   continuous node features (see docs/can.md, "Graph features")
    node_id    int64   [N]           vocabulary index of each node's CAN id (0 = out of vocabulary)
    edge_index int32   [2, E]        edge endpoints, local to their graph
    edge_attr  float32 [E, F_edge]   edge features
    y          int64   [G]           1 if any message of the window is an attack
    node_ptr   int64   [G+1]         graph g owns nodes node_ptr[g]:node_ptr[g+1]
    edge_ptr   int64   [G+1]         and edges edge_ptr[g]:edge_ptr[g+1]
    source     int64   [G]           index into the manifest's source file list
    start_row  int64   [G]           first row of the window in its source file

Opening maps the file (``torch.load(mmap=True)``): it takes milliseconds and resident memory
grows only with the pages a batch touches. Batches are gathered from the flat tensors by offsets
(``collate``), never rebuilt from per-graph objects.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import io
from pipeline.errors import MissingFileError

SPLIT_KEYS = ("x", "node_id", "edge_index", "edge_attr", "y", "node_ptr", "edge_ptr", "source", "start_row")


@dataclass
class GraphBatch:
    """A batch of window graphs, in the shape PyG layers expect."""

    x: torch.Tensor
    node_id: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    y: torch.Tensor
    batch: torch.Tensor
    num_graphs: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "GraphBatch":
        moved = {k: getattr(self, k).to(device, non_blocking=non_blocking) for k in
                 ("x", "node_id", "edge_index", "edge_attr", "y", "batch")}
        return GraphBatch(**moved, num_graphs=self.num_graphs)

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def save_split(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    missing = [k for k in SPLIT_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"split tensors missing {missing}")
    validate_split(tensors, str(path))
    io.torch_save({k: tensors[k].contiguous() for k in SPLIT_KEYS}, path)


def validate_split(t: dict[str, torch.Tensor], where: str) -> None:
    """Cheap structural checks so a corrupt cache fails at write (or open) time, not mid-training."""
    g = t["y"].shape[0]
    for ptr, total in (("node_ptr", t["x"].shape[0]), ("edge_ptr", t["edge_index"].shape[1])):
        p = t[ptr]
        if p.shape[0] != g + 1 or int(p[0]) != 0 or int(p[-1]) != total:
            raise ValueError(f"{where}: {ptr} does not cover {total} rows for {g} graphs")
    if t["node_id"].shape[0] != t["x"].shape[0] or t["edge_attr"].shape[0] != t["edge_index"].shape[1]:
        raise ValueError(f"{where}: node or edge feature rows do not match their counts")


class GraphSplit:
    """One split of the cache, memory-mapped."""

    def __init__(self, tensors: dict[str, torch.Tensor], path: Path | None = None):
        self.path = path
        self.t = tensors
        self.node_ptr = tensors["node_ptr"]
        self.edge_ptr = tensors["edge_ptr"]
        self.y = tensors["y"]

    @classmethod
    def open(cls, path: str | os.PathLike) -> "GraphSplit":
        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"graph cache split {path} does not exist (run the preprocess stage)")
        try:
            tensors = torch.load(path, mmap=True, weights_only=True)
        except Exception as exc:   # truncated or overwritten file: torch's message names no path
            raise ValueError(f"graph cache split {path} is unreadable ({type(exc).__name__}: {exc}); "
                             f"delete {path.parent} and run the preprocess stage again") from exc
        missing = [k for k in SPLIT_KEYS if k not in tensors] if isinstance(tensors, dict) else list(SPLIT_KEYS)
        if missing:
            raise ValueError(f"graph cache split {path} lacks {missing}; delete {path.parent} and run the "
                             "preprocess stage again")
        validate_split(tensors, str(path))
        return cls(tensors, path)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_node_features(self) -> int:
        return int(self.t["x"].shape[1])

    @property
    def num_edge_features(self) -> int:
        return int(self.t["edge_attr"].shape[1])

    def nodes_per_graph(self) -> torch.Tensor:
        return self.node_ptr[1:] - self.node_ptr[:-1]

    def edges_per_graph(self) -> torch.Tensor:
        return self.edge_ptr[1:] - self.edge_ptr[:-1]

    def collate(self, index: torch.Tensor) -> GraphBatch:
        """Gather graphs ``index`` into one batch with vectorized offset arithmetic.

        The offset arithmetic runs in numpy: on arrays of a batch's size, torch's per-op (and
        intra-op thread wake-up) overhead would cost more than the gathers themselves.
        """
        index = np.asarray(torch.as_tensor(index, dtype=torch.long))
        node_ptr, edge_ptr = self.node_ptr.numpy(), self.edge_ptr.numpy()
        n_start, n_count = node_ptr[index], node_ptr[index + 1] - node_ptr[index]
        e_start, e_count = edge_ptr[index], edge_ptr[index + 1] - edge_ptr[index]
        node_rows = torch.from_numpy(_ranges(n_start, n_count))
        edge_rows = torch.from_numpy(_ranges(e_start, e_count))
        new_node_offset = np.cumsum(n_count) - n_count
        edge_index = self.t["edge_index"].index_select(1, edge_rows).long()
        edge_index += torch.from_numpy(np.repeat(new_node_offset, e_count))
        return GraphBatch(
            x=self.t["x"].index_select(0, node_rows),
            node_id=self.t["node_id"].index_select(0, node_rows),
            edge_index=edge_index,
            edge_attr=self.t["edge_attr"].index_select(0, edge_rows),
            y=self.y[torch.from_numpy(index)].long(),
            batch=torch.from_numpy(np.repeat(np.arange(index.size), n_count)),
            num_graphs=int(index.size),
        )


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for each (s, c), without a Python loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, counts)


# -- what a stage reads --------------------------------------------------------------------------

def open_split(cache_dir: Path, manifest: dict[str, Any], name: str) -> GraphSplit:
    """Open split ``name`` of the cache, naming the manifest when it is missing."""
    entry = manifest.get("splits", {}).get(name)
    if entry is None:
        raise KeyError(f"{cache_dir / io.MANIFEST}: no split {name!r} (has {sorted(manifest.get('splits', {}))}); "
                       "re-run the preprocess stage")
    return GraphSplit.open(cache_dir / entry["file"])


@dataclass
class StageData:
    """What a training stage reads: the preprocess stage's cache (manifest, train and val splits)
    and the stage's device."""

    cache_dir: Path
    manifest: dict[str, Any]
    train: GraphSplit
    val: GraphSplit
    device: torch.device

    @classmethod
    def open(cls, ctx) -> "StageData":
        cache_dir = Path(ctx.upstream["preprocess"]["cache_dir"])
        manifest = io.read_json(cache_dir / io.MANIFEST)
        return cls(cache_dir, manifest, open_split(cache_dir, manifest, "train"), open_split(cache_dir, manifest, "val"),
                   ctx.device)
