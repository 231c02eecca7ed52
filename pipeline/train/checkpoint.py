"""The Checkpointer: what a fit keeps on disk so that a killed job resumes exactly where it stopped.

It owns the format of the two model files of a fit folder (names in ``pipeline.train.layout``):

    checkpoint.pt   the last finished epoch: resume_key, the progress fields (epoch, best_metric,
                    best_epoch, best_metrics, bad_epochs, finished, stopped_early), model,
                    optimizer, scaler, rng, loader_max_nodes; with several ranks also world_size
                    and rng_by_rank (every rank's RNG states)
    best.pt         the best epoch: model_class (the registered name), model_kwargs, state_dict,
                    epoch, metric, metrics; ``load_model`` rebuilds it

Resume is exact because every RNG the loop draws from (python, numpy, torch, every CUDA device) is
saved with the weights, and the shuffle order is a function of (seed, epoch). A checkpoint is only
restored when it was written for the same ``resume_key`` (the stage's input fingerprint), so a
changed profile starts afresh. Every file is written through ``pipeline.io`` (temporary sibling,
then an atomic rename), and only by rank 0; reading it is a collective.
"""
from __future__ import annotations

import copy
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import distributed, io
from pipeline.model_registry import registered_name
from pipeline.train.layout import BEST, CHECKPOINT, IN_PROGRESS


@dataclass
class Progress:
    """What survives an epoch boundary besides the tensors (each field is a key of checkpoint.pt)."""

    epoch: int = 0
    best_metric: float | None = None
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Progress:
        return cls(epoch=state["epoch"], best_metric=state["best_metric"], best_epoch=state["best_epoch"],
                   best_metrics=dict(state["best_metrics"]), bad_epochs=state["bad_epochs"],
                   finished=state["finished"], stopped_early=state["stopped_early"])


class Checkpointer:
    """Saves and restores one fit's model, optimizer, AMP scaler, RNG states and progress.

    The loop hands it its components once; then ``state_dict``/``save`` after each epoch,
    ``load``/``restore`` when a fit starts, ``save_best`` on a new best epoch, ``snapshot``/``rewind``
    around an epoch retried after an out-of-memory error.
    """

    def __init__(self, directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, *, resume_key: str, log: logging.Logger):
        self.dir = Path(directory)
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.resume_key = resume_key
        self.log = log
        self.rank, self.world_size = distributed.rank(), distributed.world_size()

    @property
    def path(self) -> Path:
        return self.dir / CHECKPOINT

    @property
    def best_path(self) -> Path:
        return self.dir / BEST

    # -- checkpoint.pt ----------------------------------------------------------
    def state_dict(self, progress: Progress, loader_max_nodes: int | None) -> dict[str, Any]:
        """What checkpoint.pt holds; with several ranks a collective (every rank's RNG is gathered)."""
        rng = rng_state()
        ranks = {"world_size": self.world_size, "rng_by_rank": distributed.gather_objects(rng)} \
            if self.world_size > 1 else {}
        return {
            "resume_key": self.resume_key,
            **asdict(progress),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "loader_max_nodes": loader_max_nodes,
            **ranks,
        }

    def save(self, state: dict[str, Any]) -> None:
        if self.rank == 0:
            io.torch_save(state, self.path)

    def load(self, device: torch.device) -> dict[str, Any] | None:
        """checkpoint.pt if it was written for this ``resume_key``; None (logged) otherwise. A collective."""
        state = torch.load(self.path, map_location=device, weights_only=True) if self.path.exists() else None
        distributed.barrier()  # every rank has read it before rank 0 may delete it (``discard``)
        if state is None or state.get("resume_key") == self.resume_key:
            return state
        self.log.info("ignoring %s: written for other inputs (%s != %s); starting afresh",
                      self.path, state.get("resume_key"), self.resume_key)
        return None

    def restore(self, state: dict[str, Any]) -> Progress:
        """Load a checkpoint's tensors and this rank's RNG states; returns its progress."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(self._own_rng(state))
        return Progress.from_checkpoint(state)

    def _own_rng(self, state: dict[str, Any]) -> dict[str, Any]:
        """This rank's RNG state from a checkpoint; a different world size cannot resume bit-exactly."""
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            self.log.warning("%s was written by %d rank(s) and resumes on %d: the remaining epochs split their "
                             "batches differently from an uninterrupted run", self.path.name,
                             saved_world, self.world_size)
        by_rank = state.get("rng_by_rank") or []
        return by_rank[self.rank] if self.rank < len(by_rank) else state["rng"]

    def discard(self) -> None:
        """A fresh start: the checkpoint and best model of other inputs go (rank 0)."""
        if self.rank == 0:
            self.path.unlink(missing_ok=True)
            self.best_path.unlink(missing_ok=True)

    # -- best.pt ----------------------------------------------------------------
    def save_best(self, epoch: int, metric: float, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        io.torch_save({
            "model_class": registered_name(self.model),
            "model_kwargs": dict(getattr(self.model, "model_kwargs", {})),
            "state_dict": self.model.state_dict(),
            "epoch": epoch,
            "metric": metric,
            "metrics": metrics,
        }, self.best_path)

    # -- in memory -----------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A copy of the weights, optimizer and RNG states, to ``rewind`` to (an epoch retried after OOM)."""
        return copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "rng": rng_state()})

    def rewind(self, snapshot: dict[str, Any]) -> None:
        """Back to ``snapshot``, which stays as it was: the optimizer would otherwise keep the
        snapshot's own state tensors and update them in place, so a second rewind in the same epoch
        would land on the steps taken after the first."""
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
        set_rng_state(snapshot["rng"])

    # -- the requeue marker -----------------------------------------------------------
    @contextmanager
    def in_progress(self) -> Iterator[None]:
        """Marks the folder as the fit running now, for the requeue hook (``layout.active_checkpoint``)."""
        marker = self.dir / IN_PROGRESS
        if self.rank == 0:
            io.write_text(marker, "")
        try:
            yield
        finally:
            if self.rank == 0:
                marker.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Every RNG the loop may draw from, in types torch.load(weights_only=True) accepts."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
