"""What a training step costs in activation memory, measured rather than guessed.

Forward + backward run on probe batches of several sizes while a tensor-allocation tracker records
the peak of live tensor bytes (``max_memory_allocated`` on CUDA), and a line
cost = a + b_node*nodes + b_edge*edges is fit; for a heterogeneous graph, one coefficient per node
type and per edge type.
"""
from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveTensorTracker(TorchDispatchMode):
    """Tracks bytes of live tensor storages created under it, and their peak.

    Works on any device, CPU included, so a CPU-only login node can measure what a step
    allocates. Storages are counted once and released when freed (weakref finalizers).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _tensors_in(out):
            self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = id(storage) if storage.data_ptr() == 0 else storage.data_ptr()
        if key in self._seen or storage.nbytes() == 0:
            return
        self._seen.add(key)
        nbytes = storage.nbytes()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key, nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes


def _tensors_in(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors_in(o)]
    return []


@dataclass
class ProbePoint:
    nodes: int
    edges: int
    peak_bytes: int


@dataclass
class ActivationFit:
    """cost(batch) = base + per_node * nodes + per_edge * edges  (bytes of one forward+backward)."""

    base: float
    per_node: float
    per_edge: float
    points: list[ProbePoint] = field(default_factory=list)
    mode: str = "measured"

    def predict(self, nodes: float, edges: float) -> float:
        return self.base + self.per_node * nodes + self.per_edge * edges

    def max_error(self) -> float:
        return max((abs(self.predict(p.nodes, p.edges) - p.peak_bytes) / max(p.peak_bytes, 1) for p in self.points),
                   default=0.0)


def measure_step_peak(step: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes a step allocates above what was live before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    tracker = LiveTensorTracker()
    with tracker:
        step()
    return tracker.peak


def measure_points(run_step: Callable[[Any], None], batches: Iterable[Any], device: torch.device,
                   count: Callable[[Any], tuple[Any, Any]], point: Callable[[Any, Any, int], Any] = ProbePoint
                   ) -> list[Any]:
    """One probe point per batch: its (nodes, edges) by ``count`` and the peak bytes of ``run_step`` on it.

    ``point`` builds the point: :class:`ProbePoint` for totals, :class:`HeteroProbePoint` for counts
    per type. Each batch is dropped before the next one is made, so probes never overlap.
    """
    points = []
    for batch in batches:
        nodes, edges = count(batch)
        peak = measure_step_peak(partial(run_step, batch), device)
        points.append(point(nodes, edges, peak))
        del batch
    return points


def measure_activation_cost(
    run_step: Callable[[Any], None],
    make_batch: Callable[[int], Any],
    sizes: Iterable[int],
    device: torch.device,
    count: Callable[[Any], tuple[int, int]],
) -> ActivationFit:
    """Probe forward+backward at several batch sizes and fit bytes = a + b_n*nodes + b_e*edges."""
    return fit_line(measure_points(run_step, (make_batch(size) for size in sizes), device, count))


def fit_line(points: list[ProbePoint]) -> ActivationFit:
    if len(points) < 2:
        raise ValueError("need at least two probe sizes to fit an activation cost")
    a = np.array([[1.0, p.nodes, p.edges] for p in points])
    b = np.array([p.peak_bytes for p in points], dtype=float)
    coef = _nonneg_lstsq(a, b)
    return ActivationFit(base=float(coef[0]), per_node=float(coef[1]), per_edge=float(coef[2]), points=points)


def _nonneg_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with non-negative slopes: nodes and edges are near-collinear across probes,
    so an unconstrained fit can trade a negative edge cost against a large node cost."""
    best, best_err = None, np.inf
    for cols in ([0, 1, 2], [0, 1], [0, 2], [1, 2], [1], [2]):
        coef_sub, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
        coef = np.zeros(3)
        coef[cols] = coef_sub
        if (coef < 0).any():
            continue
        err = float(np.sum((a @ coef - b) ** 2))
        if err < best_err:
            best, best_err = coef, err
    assert best is not None
    return best


# -- heterogeneous graphs: a cost per node type and per edge type ----------------------------------
#
# In a heterogeneous model the bytes a node or an edge costs depend on its type: in HGT a node
# type that is the source of many message types gets a key and value projection per message
# type. The fit therefore has one coefficient per node type and per edge type, measured on real
# sampled batches of varied composition and fit by least squares, pulled (ridge) towards the
# pooled line where the probes cannot tell two types apart.

@dataclass
class HeteroProbePoint:
    nodes: dict[str, int]
    edges: dict[str, int]
    peak_bytes: int


@dataclass
class HeteroActivationFit:
    """bytes = base + sum_t per_node[t] * nodes[t] + sum_r per_edge[r] * edges[r] (one forward+backward)."""

    base: float
    per_node: dict[str, float]
    per_edge: dict[str, float]
    points: list[HeteroProbePoint] = field(default_factory=list)
    mode: str = "measured"

    def predict(self, nodes: dict[str, float], edges: dict[str, float]) -> float:
        return (self.base + sum(self.per_node.get(t, 0.0) * n for t, n in nodes.items())
                + sum(self.per_edge.get(r, 0.0) * e for r, e in edges.items()))

    def max_error(self) -> float:
        return max((abs(self.predict(p.nodes, p.edges) - p.peak_bytes) / max(p.peak_bytes, 1) for p in self.points),
                   default=0.0)

    def pooled(self) -> ActivationFit:
        """The same costs as one line in total nodes and edges, averaged with the probes' type mix."""
        n_tot = {t: sum(p.nodes.get(t, 0) for p in self.points) for t in self.per_node}
        e_tot = {r: sum(p.edges.get(r, 0) for p in self.points) for r in self.per_edge}
        per_node = sum(self.per_node[t] * n for t, n in n_tot.items()) / max(sum(n_tot.values()), 1)
        per_edge = sum(self.per_edge[r] * e for r, e in e_tot.items()) / max(sum(e_tot.values()), 1)
        points = [ProbePoint(sum(p.nodes.values()), sum(p.edges.values()), p.peak_bytes) for p in self.points]
        return ActivationFit(self.base, per_node, per_edge, points, f"{self.mode}, per node and edge type")


def fit_hetero_line(points: list[HeteroProbePoint], ridge: float = 0.05) -> HeteroActivationFit:
    """Non-negative least squares over per-type coefficients, with a ridge towards the pooled line."""
    from scipy.optimize import lsq_linear

    if len(points) < 2:
        raise ValueError("need at least two probes to fit an activation cost")
    node_types = sorted({t for p in points for t in p.nodes})
    edge_types = sorted({r for p in points for r in p.edges})
    a = np.array([[1.0] + [p.nodes.get(t, 0) for t in node_types] + [p.edges.get(r, 0) for r in edge_types]
                  for p in points])
    b = np.array([p.peak_bytes for p in points], dtype=float)
    pooled = fit_line([ProbePoint(sum(p.nodes.values()), sum(p.edges.values()), p.peak_bytes) for p in points])
    prior = np.array([pooled.base] + [pooled.per_node] * len(node_types) + [pooled.per_edge] * len(edge_types))
    # Columns scaled to unit RMS so one ridge weight means the same for a rare and a common type.
    scale = np.sqrt((a ** 2).mean(axis=0))
    scale[scale == 0] = 1.0
    lam = np.sqrt(ridge * len(points))
    aug_a = np.vstack([a / scale, lam * np.eye(a.shape[1])])
    aug_b = np.concatenate([b, lam * prior * scale])
    coef = lsq_linear(aug_a, aug_b, bounds=(0, np.inf)).x / scale
    return HeteroActivationFit(base=float(coef[0]),
                               per_node={t: float(c) for t, c in zip(node_types, coef[1:1 + len(node_types)])},
                               per_edge={r: float(c) for r, c in zip(edge_types, coef[1 + len(node_types):])},
                               points=points)


def measure_hetero_activation_cost(run_step: Callable[[Any], None], batches: Iterable[Any], device: torch.device,
                                   count: Callable[[Any], tuple[dict[str, int], dict[str, int]]]
                                   ) -> HeteroActivationFit:
    """Peak live bytes of forward+backward on each probe batch, fit per node and edge type."""
    return fit_hetero_line(measure_points(run_step, batches, device, count, HeteroProbePoint))
