"""The one training loop: every training stage (autoencoder, teacher, students, curriculum) uses it.

Stages differ only in what they plug in: the model, ``loss_fn(model, batch) -> (loss, outputs)``,
the loaders and ``validate_fn(model, loader) -> metrics``. The loop owns the rest: AMP on CUDA,
gradient accumulation, early stopping, out-of-memory back-off and ``metrics.jsonl``; after every
epoch it hands its state to a ``Checkpointer`` (``pipeline.train.checkpoint``), which owns the
format of checkpoint.pt and best.pt and restores them when the fit starts again.

Files in the fit folder (the stage folder, or a model sub-folder of it; ``pipeline.train.layout``):

    checkpoint.pt     last finished epoch (``Checkpointer``)
    best.pt           best epoch so far (``load_model`` rebuilds it)
    metrics.jsonl     one line per epoch
    warnings.json     raised once per fit when validation cannot rank epochs (``pipeline.selection_check``)
    fit_in_progress   present while the fit runs: the requeue hook finds the checkpoint through it

Resume is exact: a job killed mid-epoch and re-run from checkpoint.pt ends with the same weights as
one that never stopped; a checkpoint written for another ``resume_key`` (the stage passes its input
fingerprint) is ignored, so a changed profile starts afresh.

Data-parallel: when the stage runs in a process group of W ranks (``pipeline.distributed``), the
loop wraps the model in ``DistributedDataParallel`` and shards the train loader's epoch, so one
optimizer step of W ranks covers the W consecutive batches that one process with
``grad_accum = W`` accumulates, with the same averaged gradient. DDP wraps the model and its loss
as one module (``pipeline.train.parallel.LossForward``), so whatever parameters ``loss_fn`` touches, in the model's
forward or outside it (a KG scorer's relation table), are synchronised. Losses are summed over
ranks, rank 0 validates and broadcasts the metrics (so every rank takes the same
early-stopping decision), and only rank 0 writes checkpoint.pt, best.pt and metrics.jsonl; the
checkpoint holds every rank's RNG state, so resume stays exact at the same world size.

The module runs to about 400 lines on purpose: the Trainer is one class with one method per
step (as torchtitan's trainer is), so a stage with an unusual schedule overrides a step; what is
not a step (the checkpoint format, file layout, selection, seeding) lives in its own module.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from pipeline import distributed, io, memory
from pipeline.config import TrainConfig
from pipeline.device import peak_device_mb, peak_rss_mb, reset_peak
from pipeline.selection_check import check_validation
from pipeline.stage_warnings import clear_warnings
from pipeline.train.checkpoint import Checkpointer, Progress
from pipeline.train.layout import METRICS, trim_metrics
from pipeline.train.models import count_parameters
from pipeline.train.parallel import data_parallel
from pipeline.train.runtime import configure_threads, seed_everything, to_device
from pipeline.train.selection import Selection

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Any]]
"""(model, batch on device) -> (mean loss of the batch, model outputs)."""
ValidateFn = Callable[[nn.Module, Iterable], dict[str, float]]
"""(model in eval mode, validation loader) -> metrics; runs under no_grad and autocast."""

OOM_BACKOFF = 0.5
"""Factor the node budget shrinks by after an out-of-memory epoch."""


@dataclass
class FitResult:
    best_epoch: int
    best_metric: float | None
    best_metrics: dict[str, float]
    epochs_run: int
    stopped_early: bool
    best_path: Path
    params: int
    """Parameters of the trained model."""

    def record(self) -> dict[str, Any]:
        """What every training stage's done record says of a fit (stages add their own keys)."""
        return {"best_checkpoint": str(self.best_path), "best_epoch": self.best_epoch, "best_val": self.best_metrics,
                "epochs_run": self.epochs_run, "stopped_early": self.stopped_early, "params": self.params}


class Trainer:
    """Fit ``model`` with ``loss_fn`` and select epochs on ``validate_fn``; see the module docstring.

    One method per step of the loop (train_step, optimizer_step, train_epoch, validate), so a stage
    with an unusual schedule (curriculum) overrides a step instead of copying the loop.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_loader: Iterable,
        val_loader: Iterable,
        validate_fn: ValidateFn,
        cfg: TrainConfig,
        stage_dir: str | os.PathLike,
        log: logging.Logger,
        *,
        device: torch.device | str = "cpu",
        selection: Selection = Selection(),
        optimizer: torch.optim.Optimizer | None = None,
        resume_key: str = "",
        progress: bool = True,
        memory_plan: dict[str, float] | None = None,
        find_unused_parameters: bool = False,
    ):
        configure_threads(cfg.threads)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.dir = Path(stage_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device = distributed.rank_device(torch.device(device))
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.train_model = data_parallel(self.model, self.loss_fn, train_loader, self.rank, self.world_size,
                                         self.device, find_unused_parameters, self.dir.name)
        """What a training step calls with a batch: the model's loss (in DistributedDataParallel with several ranks)."""
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.validate_fn = validate_fn
        self.cfg = cfg
        self.log = log
        self.selection = selection
        self.show_progress = progress and self.rank == 0
        self.memory_plan = memory_plan or {}
        """Planned batch memory and device total (MB), logged beside each epoch's measured peak."""
        self.optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.checkpointer = Checkpointer(self.dir, self.model, self.optimizer, self.scaler,
                                         resume_key=resume_key, log=log)
        self.state = Progress()

    # -- paths ---------------------------------------------------------
    @property
    def resume_key(self) -> str:
        """The inputs a checkpoint must have been written for to be resumed (the stage's fingerprint)."""
        return self.checkpointer.resume_key

    @resume_key.setter
    def resume_key(self, key: str) -> None:
        self.checkpointer.resume_key = key

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpointer.path

    @property
    def best_path(self) -> Path:
        return self.checkpointer.best_path

    @property
    def metrics_path(self) -> Path:
        return self.dir / METRICS

    # -- steps -----------------------------------------------------------
    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()

    def train_step(self, batch: Any, weight: float = 1.0) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns the detached loss (no host sync).

        ``weight`` 0 marks a padding batch of a data-parallel epoch: it runs (every rank must take
        part in each gradient all-reduce) but adds nothing to the gradient.
        """
        batch = to_device(batch, self.device)
        with self.autocast():
            loss, _ = self.train_model(batch)
        self.scaler.scale(loss * (weight / self.cfg.grad_accum)).backward()
        return loss.detach()

    def _grad_sync(self, sync: bool):
        """DDP all-reduces gradients on every backward; between optimizer steps that is wasted."""
        if sync or not isinstance(self.train_model, nn.parallel.DistributedDataParallel):
            return nullcontext()
        return self.train_model.no_sync()

    def optimizer_step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def train_epoch(self, epoch: int) -> float:
        """One pass over the train loader; returns the mean loss per graph."""
        self.model.train()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        weight = 0
        pending = 0
        steps = _length(self.train_loader)
        weights = self.train_loader.batch_weights() if self.world_size > 1 else None
        # In a batch log (not a terminal) a redraw every 30 s keeps progress visible without flooding it.
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.cfg.epochs}", file=sys.stderr,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0,
                   disable=not self.show_progress, leave=False, dynamic_ncols=True)
        with bar:
            for step, batch in enumerate(self.train_loader, 1):
                w = weights[step - 1] if weights is not None else 1.0
                n = int(getattr(batch, "num_graphs", 1)) if w else 0
                with self._grad_sync(pending + 1 == self.cfg.grad_accum or step == steps):
                    loss = self.train_step(batch, w) if w != 1.0 else self.train_step(batch)
                total += loss.float() * n
                weight += n
                pending += 1
                if pending == self.cfg.grad_accum:
                    self.optimizer_step()
                    pending = 0
                bar.update(1)
                if step % 10 == 0 or step == bar.total:
                    bar.set_postfix(loss=f"{float(total) / max(weight, 1):.4f}", mem=f"{self._peak_mb():.0f}MB",
                                    refresh=False)
            if pending:
                self.optimizer_step()
        if self.world_size > 1:
            summed = distributed.all_reduce_sum(torch.stack([total.double(), torch.tensor(float(weight), dtype=torch.float64,
                                                                                          device=self.device)]))
            total, weight = summed[0], int(summed[1].item())
        mean = float(total) / max(weight, 1)
        if not math.isfinite(mean):
            raise FloatingPointError(
                f"{self.dir}: train loss is {mean} in epoch {epoch}; lower train.lr or set train.amp=false")
        return mean

    def _train_epoch_with_backoff(self, epoch: int) -> float:
        """Run the epoch; on out-of-memory restore its starting state, shrink the batches and retry.

        Retrying the whole epoch (not the step) keeps resume exact: the epoch's batches are a
        function of the loader budget, which the checkpoint records.
        """
        # One rank cannot retry an epoch alone: the others are waiting in a gradient all-reduce.
        can_shrink = hasattr(self.train_loader, "shrink") and self.world_size == 1
        start = self.checkpointer.snapshot() if can_shrink else None
        while True:
            try:
                return self.train_epoch(epoch)
            except Exception as exc:
                if self.world_size > 1 and memory.is_out_of_memory(exc):
                    raise MemoryError(f"{self.dir.name}: out of memory on rank {self.rank} of {self.world_size} "
                                      "(no batch back-off in data-parallel training); lower train.batch_size or "
                                      f"safety_factor, or request GPUs with more memory (error: {exc})") from exc
                if not (can_shrink and memory.is_out_of_memory(exc)):
                    raise
                memory.free_device_memory(self.device)
                try:
                    budget = self.train_loader.shrink(OOM_BACKOFF)
                except MemoryError as floor:
                    raise MemoryError(f"{self.dir.name}: {floor}; lower model.hidden/heads or request more memory "
                                      f"(first error: {exc})") from exc
                self._cap_validation_batches(budget)
                self.checkpointer.rewind(start)
                self.optimizer.zero_grad(set_to_none=True)
                self.log.warning("%s: out of memory in epoch %d (%s); retrying with <= %d nodes per batch",
                                 self.dir.name, epoch, str(exc).splitlines()[0][:200], budget)
                io.append_jsonl(self.metrics_path, {"epoch": epoch, "event": "oom_backoff", "max_nodes": budget})

    def _cap_validation_batches(self, max_nodes: int) -> None:
        """A validation loader under a node cap follows the training budget down after an OOM."""
        current = getattr(self.val_loader, "max_nodes", None)
        if current is not None and max_nodes < current:
            self.val_loader.max_nodes = max_nodes

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Metrics of validate_fn; with several ranks rank 0 computes them and every rank gets its copy."""
        self.model.eval()
        metrics: dict[str, float] | None = None
        if self.rank == 0:
            with self.autocast():
                metrics = self.validate_fn(self.model, self.val_loader)
            missing = [k for k in self.selection.required() if k not in metrics]
            if missing:
                raise KeyError(f"validate_fn returned {sorted(metrics)}; the selection metric(s) "
                               f"{missing} are not among them")
            metrics = {k: float(v) for k, v in metrics.items()}
        return distributed.broadcast_object(metrics)

    def _peak_mb(self) -> float:
        """Peak allocated device memory on CUDA; peak resident memory of the process elsewhere."""
        peak = peak_device_mb(self.device)
        return peak if peak is not None else peak_rss_mb()

    def checkpoint(self) -> Path | None:
        """The checkpoint a requeued job continues from: the last finished epoch, already on disk.

        A half-finished epoch is deliberately not saved: its batches would replay differently
        and break exact resume.
        """
        if self.checkpoint_path.exists():
            self.log.info("preempted; will resume after epoch %d from %s", self.state.epoch, self.checkpoint_path)
            return self.checkpoint_path
        self.log.info("preempted before the first epoch finished; the requeued job starts afresh")
        return None

    # -- loop ----------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train until cfg.epochs or early stop, resuming from checkpoint.pt when it matches."""
        with self.checkpointer.in_progress():
            self._resume_or_start()
            while not self.state.finished:
                self._run_epoch(self.state.epoch + 1)
        s = self.state
        return FitResult(best_epoch=s.best_epoch, best_metric=s.best_metric, best_metrics=s.best_metrics,
                         epochs_run=s.epoch, stopped_early=s.stopped_early, best_path=self.best_path,
                         params=count_parameters(self.model))

    def _run_epoch(self, epoch: int) -> None:
        reset_peak(self.device)
        started = time.perf_counter()
        train_loss = self._train_epoch_with_backoff(epoch)
        val = self.validate()
        peak = distributed.all_reduce_max(self._peak_mb(), self.device)
        s = self.state
        improved = self._judge(epoch, val)
        record = {
            "epoch": epoch, "train_loss": train_loss, "val": val, "best": improved,
            "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 3),
            "peak_mem_mb": round(peak, 1),
            "mem_kind": "cuda_allocated" if self.device.type == "cuda" else "rss",
            **self.memory_plan,
            **({"ranks": self.world_size} if self.world_size > 1 else {}),
        }
        checkpoint = self.checkpointer.state_dict(s, getattr(self.train_loader, "max_nodes", None))
        if self.rank != 0:
            return
        # Logged before the epoch is committed: a scheduler signal that lands while the checkpoint is
        # written (its handler runs as soon as the write returns) would otherwise leave a committed
        # epoch missing from the log. Interrupted before the commit, the epoch reruns and shows twice.
        self.log.info("epoch %d/%d train_loss %.4f val %s%s (%.1fs, peak %.0f MB)", epoch, self.cfg.epochs,
                      train_loss, _fmt(val), " (best)" if improved else "", record["seconds"], record["peak_mem_mb"])
        io.append_jsonl(self.metrics_path, record)
        check_validation(self.dir, self.selection, val, getattr(self.val_loader, "labels", None),
                         self.metrics_path if s.finished else None, self.log)
        # best.pt is written before checkpoint.pt: a checkpoint never points at a best.pt not yet on disk.
        self.checkpointer.save(checkpoint)
        if s.stopped_early:
            self.log.info("early stop: no %s improvement for %d epochs; best epoch %d (%s=%.4f)",
                          self.selection.metric, s.bad_epochs, s.best_epoch, self.selection.metric, s.best_metric)

    def _judge(self, epoch: int, val: dict[str, float]) -> bool:
        """Update the progress with this epoch's metrics (best epoch, patience, finished); saves best.pt
        on an improvement. Returns whether the epoch is the new best."""
        s = self.state
        improved = self.selection.better(val, s.best_metrics if s.best_epoch else None)
        if improved:
            s.best_metric, s.best_epoch, s.best_metrics, s.bad_epochs = val[self.selection.metric], epoch, val, 0
            self.checkpointer.save_best(epoch, s.best_metric, val)
        else:
            s.bad_epochs += 1
        s.epoch = epoch
        s.stopped_early = s.bad_epochs >= self.cfg.patience and epoch < self.cfg.epochs
        s.finished = epoch >= self.cfg.epochs or s.stopped_early
        return improved

    def _resume_or_start(self) -> None:
        state = self.checkpointer.load(self.device)
        if state is not None:
            self.state = self.checkpointer.restore(state)
            if state.get("loader_max_nodes") is not None and hasattr(self.train_loader, "max_nodes"):
                self.train_loader.max_nodes = state["loader_max_nodes"]   # keep a plan shrunk after OOM
                self._cap_validation_batches(state["loader_max_nodes"])
            if self.rank == 0:
                trim_metrics(self.metrics_path, self.state.epoch)
            self.log.info("resuming from %s after epoch %d (best epoch %d)", self.checkpoint_path,
                          self.state.epoch, self.state.best_epoch)
            self._same_batches_on_every_rank()
            return
        self.checkpointer.discard()
        if self.rank == 0:
            self.metrics_path.unlink(missing_ok=True)
            clear_warnings(self.dir)
        # Rank 0 draws what one process would; the others get streams of their own (dropout masks).
        seed_everything(self.cfg.seed + self.rank)
        self._same_batches_on_every_rank()

    def _same_batches_on_every_rank(self) -> None:
        """Rank 0's node budget everywhere: ranks measuring slightly different memory plans would
        cut the epoch into different batch counts and wait for each other forever."""
        if self.world_size > 1 and hasattr(self.train_loader, "max_nodes"):
            self.train_loader.max_nodes = distributed.broadcast_object(self.train_loader.max_nodes)


# -- helpers ---------------------------------------------------------------------

def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
