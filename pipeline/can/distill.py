"""Knowledge distillation: the KD losses, the teacher-output cache and teacher offloading.

Two ways to get teacher outputs into a student's loss, both chosen in ``distill``:

* ``use_teacher_cache``: the teacher runs once over the train split, in memory-planned chunks,
  and its outputs are written beside the graph cache as
  ``<graph cache>/teacher_outputs/<teacher checkpoint hash>/train.pt``. Training batches then read
  them back by graph index from an mmap'd file, so the teacher neither runs every epoch nor
  occupies the device during training. The file is keyed by the checkpoint's content, written
  atomically, and reused by later epochs, resumed jobs and the curriculum stage.
* otherwise the teacher runs every step; with ``offload_teacher_to_cpu`` it lives on the CPU and
  is moved to the device only for its forward pass, so it never holds device memory between
  batches.

The same mechanism stores other per-graph outputs of a model, such as the curriculum's
difficulty scores (``OutputCache``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from pipeline import distributed, io
from pipeline.can.data.cache import GraphBatch, GraphSplit
from pipeline.can.inference import Forward, gather, plan_inference
from pipeline.can.models.vgae import VGAE

# -- losses ---------------------------------------------------------------------------------


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton's soft-target loss: KL between the tempered softmaxes, times T^2 so its gradient
    scale does not shrink with T. The teacher's distribution is the target (``kl_div(log p_s, p_t)``).

    ``sample_weight`` averages the per-graph KL with weights (as weighted cross-entropy does).
    """
    t = temperature
    log_p_s = nn.functional.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = nn.functional.log_softmax(teacher_logits.float() / t, dim=-1)
    per_graph = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    if sample_weight is None:
        return per_graph.mean() * t * t
    return (per_graph * sample_weight).sum() / sample_weight.sum().clamp_min(1e-12) * t * t


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, y: torch.Tensor, *,
            temperature: float, alpha: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """alpha * KD term + (1 - alpha) * cross-entropy on the hard labels, both weighted by ``weight``
    (per class). A confident teacher's soft targets are close to its labels; left unweighted, the
    KD term would pull the student to the majority class that class weighting exists to counter.
    """
    hard = nn.functional.cross_entropy(student_logits.float(), y, weight=weight)
    if alpha == 0 or teacher_logits is None:
        return hard
    sample_weight = weight[y] if weight is not None else None
    return alpha * kd_term(student_logits, teacher_logits, temperature, sample_weight) + (1 - alpha) * hard


def vgae_kd_loss(student: nn.Module, batch: GraphBatch, teacher: dict[str, torch.Tensor], alpha: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - alpha) * the student's own VGAE loss + alpha * matching of the teacher's node latents
    (through the student's projection) and reconstructed features. Returns (loss, scores).

    ``student`` may be the DistributedDataParallel wrapper: the forward goes through it (so
    gradients are synchronised), the loss helpers are read from the module inside.
    """
    out = student(batch)
    vgae: VGAE = getattr(student, "module", student)
    own, scores = vgae.loss(batch, out)
    if alpha == 0:
        return own, scores
    if vgae.latent_proj is None:
        raise ValueError("VGAE student needs project_to=<teacher latent_dim> to be distilled")
    latent = nn.functional.mse_loss(vgae.latent_proj(out.mu).float(), teacher["mu"].float())
    recon = nn.functional.mse_loss(out.x_hat.float(), teacher["x_hat"].float())
    return (1 - alpha) * own + alpha * (latent + recon), scores


# -- what the teacher outputs --------------------------------------------------------------------

@dataclass(frozen=True)
class TeacherKind:
    """Which outputs of a teacher a student learns from, and at which level they are stored."""

    name: str
    forward: Forward
    levels: dict[str, str]
    """Output name -> 'graph' (one row per graph) or 'node' (one row per node)."""


def _gat_logits(model: nn.Module, batch: GraphBatch) -> dict[str, torch.Tensor]:
    return {"logits": model(batch)}


def _vgae_targets(model: nn.Module, batch: GraphBatch) -> dict[str, torch.Tensor]:
    out = model(batch)
    return {"mu": out.mu, "x_hat": out.x_hat}


GAT_TEACHER = TeacherKind("gat", _gat_logits, {"logits": "graph"})
VGAE_TEACHER = TeacherKind("vgae", _vgae_targets, {"mu": "node", "x_hat": "node"})


# -- the output cache ------------------------------------------------------------------------

@dataclass
class OutputCache:
    """Per-graph or per-node outputs of one model file on one split, beside the graph cache."""

    graph_cache: Path
    kind: str
    """Folder name: 'teacher_outputs', 'difficulty', ..."""
    model_path: Path
    split: str
    computed: bool = field(default=False, init=False)
    """True if this process computed the file (False: it was already there)."""
    key: str = field(default="", init=False)
    """Content hash of the model file."""

    def __post_init__(self) -> None:
        # outputs cached under the weights' content hash are valid exactly as long as the weights
        self.key = io.file_sha256(self.model_path)[:16]

    @property
    def path(self) -> Path:
        return Path(self.graph_cache) / self.kind / self.key / f"{self.split}.pt"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, torch.Tensor]:
        return torch.load(self.path, mmap=True, weights_only=True)

    def get_or_compute(self, compute: Callable[[], dict[str, torch.Tensor]],
                       log: logging.Logger | None = None) -> dict[str, torch.Tensor]:
        """Open the cached outputs, computing and writing them (atomically) first if missing.

        In data-parallel training rank 0 computes them while the other ranks wait.
        """
        path = self.path
        if path.exists():
            if log:
                log.info("%s: reusing %s", self.kind, path)
            return self.load()
        if distributed.is_main():
            outputs = {k: v.contiguous() for k, v in compute().items()}
            io.torch_save(outputs, path)
            self.computed = True
            if log:
                log.info("%s: wrote %s (%s)", self.kind, path,
                         ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items()))
        distributed.barrier()
        return self.load()


def compute_teacher_outputs(teacher: nn.Module, kind: TeacherKind, split: GraphSplit, device: torch.device,
                            safety_factor: float, cap_bytes: int | None,
                            log: logging.Logger | None = None) -> dict[str, torch.Tensor]:
    """Run ``teacher`` over ``split`` in memory-planned chunks; outputs in graph (and node) order."""
    teacher.to(device).eval()
    plan = plan_inference(teacher, split, kind.forward, device, safety_factor, cap_bytes=cap_bytes,
                          log=(log.info if log else lambda msg: None))
    outputs = gather(teacher, kind.forward, split, plan, device)
    for key, level in kind.levels.items():
        expected = len(split) if level == "graph" else int(split.node_ptr[-1])
        if outputs[key].shape[0] != expected:
            raise RuntimeError(f"teacher output {key!r} has {outputs[key].shape[0]} rows, expected {expected}")
    return outputs


# -- batches that carry teacher outputs ----------------------------------------------------------

@dataclass
class DistillBatch(GraphBatch):
    """A GraphBatch plus the teacher outputs of its graphs (read from the cache by index)."""

    index: torch.Tensor | None = None
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "DistillBatch":
        moved = GraphBatch.to(self, device, non_blocking)
        return DistillBatch(**{k: getattr(moved, k) for k in ("x", "node_id", "edge_index", "edge_attr", "y",
                                                             "batch", "num_graphs")},
                            index=self.index,
                            teacher={k: v.to(device, non_blocking=non_blocking) for k, v in self.teacher.items()})


class IndexBatches(Protocol):
    """What a train loader exposes for the Trainer and for wrapping: GraphLoader, CurriculumLoader."""

    split: GraphSplit
    max_nodes: int | None

    def batches(self) -> list[torch.Tensor]: ...
    def set_epoch(self, epoch: int) -> None: ...
    def shrink(self, factor: float) -> int: ...
    def shard(self, rank: int, world: int) -> None: ...
    def batch_weights(self) -> list[float]: ...


class TeacherOutputLoader:
    """Wraps a train loader: same batches, each carrying the cached teacher outputs of its graphs.

    Batch composition, shuffling, the node budget and OOM shrinking all stay with the wrapped
    loader (so resume and back-off behave exactly as without distillation).
    """

    def __init__(self, inner: IndexBatches, outputs: dict[str, torch.Tensor], levels: dict[str, str]):
        self.inner = inner
        self.split = inner.split
        self.outputs = outputs
        self.levels = levels
        self._node_ptr = inner.split.node_ptr.numpy()

    @property
    def max_nodes(self) -> int | None:
        return self.inner.max_nodes

    @max_nodes.setter
    def max_nodes(self, value: int | None) -> None:
        self.inner.max_nodes = value

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def shrink(self, factor: float) -> int:
        return self.inner.shrink(factor)

    def shard(self, rank: int, world: int) -> None:
        self.inner.shard(rank, world)

    def batch_weights(self) -> list[float]:
        return self.inner.batch_weights()

    def batches(self) -> list[torch.Tensor]:
        return self.inner.batches()

    def __len__(self) -> int:
        return len(self.inner.batches())

    def __iter__(self) -> Iterator[DistillBatch]:
        for index in self.inner.batches():
            yield self.collate(index)

    def collate(self, index: torch.Tensor) -> DistillBatch:
        batch = self.split.collate(index)
        rows = node_rows(self._node_ptr, np.asarray(index))
        teacher = {key: self.outputs[key].index_select(0, index if self.levels[key] == "graph" else rows)
                   for key in self.outputs}
        return DistillBatch(**vars(batch), index=torch.as_tensor(index), teacher=teacher)


def node_rows(node_ptr: np.ndarray, index: np.ndarray) -> torch.Tensor:
    """Flat node rows of graphs ``index``, in the order ``GraphSplit.collate`` lays them out."""
    starts, counts = node_ptr[index], node_ptr[index + 1] - node_ptr[index]
    total = int(counts.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    offsets = np.cumsum(counts) - counts
    return torch.from_numpy(np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, counts))


# -- teacher outputs inside the loss ---------------------------------------------------------------

class TeacherSource(Protocol):
    def __call__(self, batch: GraphBatch) -> dict[str, torch.Tensor]: ...


class CachedTeacher:
    """Teacher outputs that arrive with the batch (``TeacherOutputLoader``)."""

    mode = "cache"

    def __call__(self, batch: GraphBatch) -> dict[str, torch.Tensor]:
        teacher = getattr(batch, "teacher", None)
        if not teacher:
            raise ValueError("batch carries no teacher outputs: wrap the train loader in TeacherOutputLoader")
        return teacher


class StandInTeacher:
    """Zeros shaped like the teacher's outputs, for the memory planner's probe batches.

    The planner builds plain batches without cached outputs; reading cached outputs costs only
    their (tiny) rows, so zeros of the same shape measure the same step.
    """

    mode = "cache"

    def __init__(self, widths: dict[str, int], levels: dict[str, str]):
        self.widths = widths
        self.levels = levels

    def __call__(self, batch: GraphBatch) -> dict[str, torch.Tensor]:
        rows = {"graph": batch.num_graphs, "node": batch.num_nodes}
        return {k: torch.zeros(rows[self.levels[k]], w, device=batch.x.device) for k, w in self.widths.items()}


class LiveTeacher:
    """Runs the teacher inside the step. With ``offload`` it is kept on the CPU and moved to the
    device only for its forward pass, so it holds no device memory between batches."""

    def __init__(self, teacher: nn.Module, kind: TeacherKind, device: torch.device, offload: bool):
        self.teacher = teacher.eval()
        self.kind = kind
        self.device = device
        self.offload = offload and device.type != "cpu"
        self.teacher.to("cpu" if self.offload else device)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @property
    def mode(self) -> str:
        return "offload" if self.offload else "resident"

    def resident(self) -> nn.Module | None:
        """The teacher as it sits on the device between steps (for the static memory budget)."""
        return None if self.offload else self.teacher

    @torch.no_grad()
    def __call__(self, batch: GraphBatch) -> dict[str, torch.Tensor]:
        if not self.offload:
            return self.kind.forward(self.teacher, batch)
        self.teacher.to(self.device)
        try:
            return {k: v.detach() for k, v in self.kind.forward(self.teacher, batch).items()}
        finally:
            self.teacher.to("cpu")


def teacher_report(source: Any, cache: OutputCache | None) -> dict[str, Any]:
    """What the run's metrics record about how the teacher was used."""
    return {
        "teacher_cache": cache is not None,
        "teacher_cache_path": str(cache.path) if cache is not None else None,
        "teacher_cache_computed": bool(cache.computed) if cache is not None else None,
        "teacher_offload": getattr(source, "mode", None) == "offload",
        "teacher_mode": getattr(source, "mode", None),
    }
