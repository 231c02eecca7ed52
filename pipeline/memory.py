"""Memory budgets and batch plans: how many nodes and edges fit on the device, and why.

usable = device total x safety_factor - fixed overhead - static (params, grads, optimizer, teacher)
batch  = usable / activation cost per unit (node, edge), with the cost measured, not guessed:
forward + backward run on probe batches of several sizes while a tensor-allocation tracker
records the peak of live tensor bytes, and a line cost = a + b_node*nodes + b_edge*edges is fit.
"""
from __future__ import annotations

import gc
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline import distributed, hostmem

GiB = 1024**3
MiB = 1024**2
CUDA_CONTEXT_BYTES = 600 * MiB
"""CUDA context, cuBLAS/cuDNN handles and workspaces: not visible to the caching allocator."""
FRAGMENTATION = 0.10
"""Share of the usable memory kept back for allocator fragmentation and rounding."""
HOST_ALLOCATOR_SLACK = 0.10
"""Extra share of a CPU budget kept back: with large tensors freed and reallocated every step,
glibc keeps freed heap in its arenas, and the process's peak RSS ran ~10% of the budget above
the sum of measured tensor bytes on the full-scale synthetic PrimeKG (bench/kg_bench.py)."""
MEMORY_GB_ENV = "PIPELINE_MEMORY_GB"
"""Environment variable that replaces the detected device total (GB) the planner budgets for."""


# -- device total --------------------------------------------------------------

@dataclass(frozen=True)
class DeviceMemory:
    total: int
    source: str


def device_memory(device: torch.device, target_gb: float | None = None) -> DeviceMemory:
    """Memory the device offers this job: the planned target, CUDA/MPS totals, or the CPU limit.

    ``PIPELINE_MEMORY_GB`` replaces the detected total, for a node whose limit the job cannot
    see (shared without cgroup enforcement). Above the job's real limit it overcommits: the plan
    then fills memory the job does not have, which the cluster's memory kill test relies on.
    """
    if target_gb is not None:
        return DeviceMemory(int(target_gb * GiB), "profile target")
    override = os.environ.get(MEMORY_GB_ENV, "").strip()
    if override:
        return DeviceMemory(int(float(override) * GiB), MEMORY_GB_ENV)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(total, "torch.cuda.mem_get_info")
    if device.type == "mps":
        return DeviceMemory(int(torch.mps.recommended_max_memory()), "torch.mps.recommended_max_memory")
    limit = cpu_memory_limit()
    ranks = distributed.local_world_size()
    if ranks > 1:   # data-parallel ranks on one node share its host memory; each plans for its share
        return DeviceMemory(limit.total // ranks, f"{limit.source} / {ranks} ranks on this node")
    return limit


def cpu_memory_limit() -> DeviceMemory:
    """The tightest of: the process's cgroup limits, SLURM's --mem / --mem-per-cpu, physical memory."""
    candidates: list[DeviceMemory] = cgroup_memory_limits()
    per_node = os.environ.get("SLURM_MEM_PER_NODE")
    if per_node and per_node.isdigit():
        candidates.append(DeviceMemory(int(per_node) * MiB, "SLURM_MEM_PER_NODE"))
    per_cpu, cpus = os.environ.get("SLURM_MEM_PER_CPU"), os.environ.get("SLURM_CPUS_ON_NODE")
    if per_cpu and per_cpu.isdigit() and cpus and cpus.isdigit():
        candidates.append(DeviceMemory(int(per_cpu) * int(cpus) * MiB, "SLURM_MEM_PER_CPU x SLURM_CPUS_ON_NODE"))
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    candidates.append(DeviceMemory(pages * page_size, "physical memory"))
    return min(candidates, key=lambda c: c.total)


CGROUP_UNLIMITED = 1 << 60
"""cgroup v1 writes "no limit" as a huge page-aligned number (v2 writes "max")."""


def cgroup_memory_limits(proc_cgroup: str | Path = "/proc/self/cgroup",
                         root: str | Path = "/sys/fs/cgroup") -> list[DeviceMemory]:
    """Memory limits of this process's cgroup and of every ancestor (each one applies).

    The process's own cgroup, not the root's: SLURM's task/cgroup plugin sets the job's limit on
    ``.../job_<id>`` and places the steps below it, and a container's limit sits on its own
    group. cgroup v2 (``0::/path``) reads ``memory.max``; v1 (``N:...memory...:/path``) reads
    ``memory/<path>/memory.limit_in_bytes``.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return []
    root = Path(root)
    found: list[DeviceMemory] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, group = parts
        if hierarchy == "0" and controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = base / group.strip("/")
        while True:
            try:
                raw = (folder / name).read_text().strip()
            except OSError:
                raw = ""
            if raw.isdigit() and int(raw) < CGROUP_UNLIMITED:
                found.append(DeviceMemory(int(raw), f"cgroup {folder / name}"))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return found


# -- static costs ----------------------------------------------------------------

def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages (a storage shared by several tensors is counted once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t.device.type == "meta":
            total += t.numel() * t.element_size()
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def static_costs(model: torch.nn.Module, optimizer_states: int = 2, teacher: torch.nn.Module | None = None,
                 embedding_types: tuple[type, ...] = (torch.nn.Embedding,)) -> dict[str, int]:
    """Parameters, gradients, optimizer state (AdamW keeps 2 per trainable parameter), teacher, embeddings."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    embeddings = [p for m in model.modules() if isinstance(m, embedding_types) for p in m.parameters()]
    return {
        "parameters": tensor_bytes(params),
        "gradients": tensor_bytes(trainable),
        "optimizer state": optimizer_states * tensor_bytes(trainable),
        "teacher (on device)": tensor_bytes(teacher.parameters()) if teacher is not None else 0,
        "of which embedding tables": tensor_bytes(embeddings),
    }


def process_baseline(model: torch.nn.Module) -> int:
    """Resident memory of this process, less the model's own CPU parameters (counted as parameters).

    Taken before probing: probes leave freed heap in glibc's arenas, which is the allocator
    slack's share, not the baseline's.
    """
    import psutil

    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == "cpu")
    return max(0, psutil.Process().memory_info().rss - params)


def host_process_lines(baseline: int, total: int) -> tuple[dict[str, int], dict[str, int]]:
    """What the process itself takes of a CPU budget, as (fixed, static) budget lines.

    On the host the interpreter, torch, PyG and the mapped cache share the job's memory limit
    with the tensors; a plan that counts only tensors gets the job killed under a tight --mem.
    """
    return ({"host allocator slack": int(total * HOST_ALLOCATOR_SLACK)},
            {"interpreter and libraries (RSS)": baseline})


# -- measured activation cost -------------------------------------------------------

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


def measure_activation_cost(
    run_step: Callable[[Any], None],
    make_batch: Callable[[int], Any],
    sizes: Iterable[int],
    device: torch.device,
    count: Callable[[Any], tuple[int, int]],
) -> ActivationFit:
    """Probe forward+backward at several batch sizes and fit bytes = a + b_n*nodes + b_e*edges."""
    points = []
    for size in sizes:
        batch = make_batch(size)
        nodes, edges = count(batch)
        peak = measure_step_peak(lambda: run_step(batch), device)
        points.append(ProbePoint(nodes, edges, peak))
        del batch
    return fit_line(points)


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


# -- budget and plan ---------------------------------------------------------------

@dataclass
class MemoryBudget:
    device: str
    total: int
    total_source: str
    safety_factor: float
    fixed: dict[str, int]
    static: dict[str, int]
    activation: ActivationFit

    @property
    def static_total(self) -> int:
        return sum(v for k, v in self.static.items() if not k.startswith("of which"))

    @property
    def fixed_total(self) -> int:
        return sum(self.fixed.values())

    @property
    def usable_for_activations(self) -> int:
        return int(self.total * self.safety_factor) - self.fixed_total - self.static_total

    def table(self) -> str:
        rows = [("device", f"{self.device} ({self.total_source})"), ("device total", _fmt(self.total)),
                (f"x safety_factor {self.safety_factor}", _fmt(self.total * self.safety_factor))]
        rows += [(f"- {k}", _fmt(v)) for k, v in self.fixed.items()]
        rows += [(f"- {k}" if not k.startswith("of which") else f"  ({k})", _fmt(v)) for k, v in self.static.items()]
        rows += [("= for activations", _fmt(self.usable_for_activations)),
                 ("activation / node", f"{self.activation.per_node:,.0f} B"),
                 ("activation / edge", f"{self.activation.per_edge:,.0f} B"),
                 ("activation base", _fmt(self.activation.base)),
                 ("cost model", f"{self.activation.mode} (fit error {self.activation.max_error():.1%})")]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{k:<{width}}  {v:>14}" for k, v in rows)


def fixed_overhead(device: torch.device, total: int) -> dict[str, int]:
    fixed = {"allocator fragmentation buffer": int(total * FRAGMENTATION)}
    if device.type == "cuda":
        fixed["CUDA context"] = CUDA_CONTEXT_BYTES
    return fixed


def cached_plan(path: str | os.PathLike, key: str) -> tuple[MemoryBudget, dict[str, Any]] | None:
    """The budget and raw plan saved at ``path`` for ``key``, or None when absent or for other inputs."""
    path = Path(path)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("key") != key:
        return None
    act = data["budget"].pop("activation")
    fit = ActivationFit(**{**act, "points": [ProbePoint(**p) for p in act["points"]]})
    return MemoryBudget(**data["budget"], activation=fit), data["plan"]


# -- out-of-memory back-off -----------------------------------------------------------

def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
    else:
        hostmem.release_freed_heap()


def _fmt(n: float) -> str:
    n = float(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


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
    points = []
    for batch in batches:
        nodes, edges = count(batch)
        peak = measure_step_peak(lambda: run_step(batch), device)
        points.append(HeteroProbePoint(nodes, edges, peak))
        del batch
    return fit_hetero_line(points)


