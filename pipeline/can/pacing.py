"""Curriculum learning: difficulty scores from the VGAE and a pacing schedule over normal graphs.

A normal window that the autoencoder reconstructs well is a typical one; one it reconstructs
badly is unusual traffic that looks most like an attack, i.e. a hard negative. The schedule
starts from all attacks plus the easiest ``start_fraction`` of normal graphs and admits harder
normals epoch by epoch along a pacing function until ``end_fraction`` of them are in, after
``ramp_fraction`` of the epochs. Attacks are always all in: they are the minority class.

Which graphs an epoch sees is a pure function of (scores, epoch), so a resumed job replays
exactly the batches an uninterrupted one would have seen.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import torch

from pipeline.can.config import CurriculumConfig
from pipeline.can.data.cache import GraphBatch, GraphSplit
from pipeline.can.data.loader import GraphLoader
from pipeline.can.distill import OutputCache
from pipeline.can.inference import gather, plan_inference
from pipeline.train import load_model


def pace(t: float, cfg: CurriculumConfig) -> float:
    """Share of normal graphs admitted at progress ``t`` in [0, 1] of the ramp."""
    t = min(max(t, 0.0), 1.0)
    s, e = cfg.start_fraction, cfg.end_fraction
    if cfg.pacing == "linear":
        return s + (e - s) * t
    if cfg.pacing == "root":          # fast at first, when each new graph adds most (Platanios et al.)
        return math.sqrt(s * s + (e * e - s * s) * t)
    if cfg.pacing == "geometric":     # slow at first: a constant ratio per epoch
        return s * (e / s) ** t
    return s + (e - s) * math.floor(t * cfg.steps) / cfg.steps   # step


def admitted_fraction(epoch: int, epochs: int, cfg: CurriculumConfig) -> float:
    """Share of normal graphs in epoch ``epoch`` (1-based) of ``epochs``: the start share in
    epoch 1, the end share from epoch ramp + 1 on, where ramp = ceil(ramp_fraction * epochs)."""
    ramp = max(1, math.ceil(cfg.ramp_fraction * epochs))
    return pace((epoch - 1) / ramp, cfg)


class CurriculumLoader:
    """Train loader whose graph set grows with the epoch: all attacks + the easiest normals.

    Exposes what the Trainer uses (set_epoch, iteration, len, max_nodes, shrink) and ``batches``
    so ``TeacherOutputLoader`` can wrap it. Batching within an epoch is a shuffled ``GraphLoader``
    over the admitted graphs, filled to the node budget.
    """

    def __init__(self, split: GraphSplit, scores: torch.Tensor, cfg: CurriculumConfig, epochs: int,
                 batch_size: int, seed: int = 0, max_nodes: int | None = None):
        if scores.shape[0] != len(split):
            raise ValueError(f"{scores.shape[0]} difficulty scores for a split of {len(split)} graphs")
        self.split = split
        self.cfg = cfg
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self._max_nodes = max_nodes
        y = split.y.long()
        self.attacks = torch.nonzero(y == 1).flatten()
        normal = torch.nonzero(y == 0).flatten()
        order = torch.argsort(scores[normal].float(), stable=True)
        self.normals_by_difficulty = normal[order]
        """Normal graph indices, easiest first (ties keep index order)."""
        self.epoch = 0
        self.rank, self.world = 0, 1
        self._loader: GraphLoader | None = None
        self.set_epoch(1)

    def admitted(self, epoch: int) -> torch.Tensor:
        """Graph indices seen in ``epoch``, in index order."""
        n = self.normals_by_difficulty.numel()
        k = min(n, math.ceil(admitted_fraction(epoch, self.epochs, self.cfg) * n))
        return torch.sort(torch.cat([self.attacks, self.normals_by_difficulty[:k]])).values

    def set_epoch(self, epoch: int) -> None:
        if self._loader is None or epoch != self.epoch:
            self._loader = GraphLoader(self.split, self.batch_size, shuffle=True, seed=self.seed,
                                       indices=self.admitted(epoch), max_nodes=self._max_nodes)
            if self.world > 1:
                self._loader.shard(self.rank, self.world)
        self._loader.set_epoch(epoch)
        self.epoch = epoch

    @property
    def max_nodes(self) -> int | None:
        return self._max_nodes

    @max_nodes.setter
    def max_nodes(self, value: int | None) -> None:
        self._max_nodes = value
        self._loader = None      # rebuilt with the new budget
        self.set_epoch(self.epoch)

    def shrink(self, factor: float) -> int:
        self._max_nodes = self._loader.shrink(factor)
        return self._max_nodes

    def shard(self, rank: int, world: int) -> None:
        """Data-parallel: every epoch's loader keeps only this rank's share of the batches."""
        self.rank, self.world = rank, world
        self._loader.shard(rank, world)

    def batch_weights(self) -> list[float]:
        return self._loader.batch_weights()

    @property
    def num_graphs(self) -> int:
        return self._loader.num_graphs

    def batches(self) -> list[torch.Tensor]:
        return self._loader.batches()

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[GraphBatch]:
        return iter(self._loader)


def score_graphs(model: torch.nn.Module, batch: GraphBatch) -> torch.Tensor:
    """The VGAE's per-graph reconstruction error (an inference ``Forward``)."""
    return model.score(batch)


def difficulty_scores(vgae_path: str | Path, split: GraphSplit, graph_cache: Path, device: torch.device,
                      safety_factor: float, cap_bytes: int | None, log: logging.Logger,
                      split_name: str = "train") -> tuple[torch.Tensor, OutputCache]:
    """Reconstruction error of every graph of ``split`` under the VGAE in ``vgae_path``.

    Scored once, in chunks planned from the memory budget (device memory is freed between them),
    and saved beside the graph cache under the VGAE checkpoint's hash, so a resumed or repeated
    run reads them back instead of scoring again.
    """
    cache = OutputCache(graph_cache, "difficulty", Path(vgae_path), split_name)

    def compute() -> dict[str, torch.Tensor]:
        model = load_model(vgae_path, device)
        plan = plan_inference(model, split, score_graphs, device, safety_factor, cap_bytes=cap_bytes, log=log.info)
        scores = gather(model, score_graphs, split, plan, device)["out"]
        del model
        return {"score": scores}

    return cache.get_or_compute(compute, log)["score"], cache
