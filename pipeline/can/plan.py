"""Batch plans of the CAN stages: graphs and nodes per batch whose measured activation memory fits the budget.

The probe-and-budget skeleton is ``pipeline.memory.planner``; this module supplies what is CAN's own:
probes of 8..64 whole window graphs, one line in total nodes and edges, the host pages of the mapped
graph cache, a node budget per batch sized for the densest graph, and a retry with gradient
checkpointing when the plan leaves too few graphs per batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from pipeline import io
from pipeline.memory.budget import (
    MemoryBudget,
    cached_plan,
    format_bytes,
    tensor_bytes,
    write_plan,
)
from pipeline.memory.limits import device_memory
from pipeline.memory.measure import ProbePoint, fit_line
from pipeline.memory.planner import (
    Attempt,
    Measured,
    PlanRequest,
    Probes,
    Workload,
    backward_step,
    plan_memory,
)


@dataclass
class BatchPlan:
    """Per-batch limits: nodes and edges to fill a batch with, and the graph count at mean size."""

    max_nodes: int
    max_edges: int
    graphs: int
    predicted_bytes: int
    reason: str
    checkpointing: bool = False

    def shrunk(self, factor: float) -> "BatchPlan":
        return BatchPlan(max(1, int(self.max_nodes * factor)), max(1, int(self.max_edges * factor)),
                         max(1, int(self.graphs * factor)), int(self.predicted_bytes * factor),
                         f"shrunk x{factor} after out-of-memory", self.checkpointing)


def plan_batches(budget: MemoryBudget, nodes_per_graph: float, edges_per_graph: float,
                 max_graphs: int | None = None, edges_per_node: float | None = None) -> BatchPlan:
    """The node budget per batch whose predicted activation memory fits, and its graph count.

    Batches are filled to a node budget, so the bound that matters is per node: its own cost plus
    the cost of the edges a node can bring. ``edges_per_node`` (the densest graph's ratio) keeps a
    batch of small, edge-dense graphs within budget; by default the ratio of the given sizes.
    """
    usable = budget.usable_for_activations - budget.activation.base
    if usable <= 0:
        raise MemoryError(
            f"static memory ({format_bytes(budget.static_total + budget.fixed_total)}) exceeds the budget "
            f"({format_bytes(budget.total * budget.safety_factor)}): lower hidden dims, offload the teacher, "
            "or request more memory"
        )
    ratio = edges_per_node if edges_per_node is not None else edges_per_graph / max(nodes_per_graph, 1e-9)
    per_node = budget.activation.per_node + budget.activation.per_edge * ratio
    max_nodes = int(usable // max(per_node, 1.0))
    graphs = max(1, int(max_nodes // max(nodes_per_graph, 1.0)))
    reason = "memory budget"
    if max_graphs is not None and graphs > max_graphs:
        graphs, reason = max_graphs, "capped by train.batch_size"
        max_nodes = int(graphs * nodes_per_graph)
    max_nodes = max(max_nodes, 1)
    max_edges = max(int(max_nodes * ratio), 1)
    predicted = int(budget.activation.predict(max_nodes, max_edges))
    return BatchPlan(max_nodes=max_nodes, max_edges=max_edges, graphs=graphs, predicted_bytes=predicted, reason=reason)


USEFUL_GRAPHS = 16
"""Below this many graphs per batch the planner tries gradient checkpointing, then warns."""


PROBE_GRAPHS = (8, 16, 32, 64)
"""Probe batch sizes (graphs); small enough to run on any device, spread enough to fit a line."""


def plan_key(model: torch.nn.Module, split: Any, device: torch.device, safety_factor: float,
             max_graphs: int, target_gb: float | None = None) -> str:
    """Identity of a plan: the model's shape, the data's shape and the device it is for.

    The device's total is part of it, so a job resumed with more (or less) memory plans again
    instead of reusing a plan sized for the old limit.
    """
    payload = {
        "model": type(model).__name__, "kwargs": dict(getattr(model, "model_kwargs", {})),
        "graphs": len(split), "nodes": int(split.node_ptr[-1]), "edges": int(split.edge_ptr[-1]),
        "device": str(device), "device_total": device_memory(device, target_gb).total,
        "safety_factor": safety_factor, "max_graphs": max_graphs, "target_gb": target_gb,
    }
    return io.digest(payload)


def plan_graph_batches(
    model: torch.nn.Module,
    split: Any,
    loss_fn: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, Any]],
    device: torch.device,
    safety_factor: float,
    max_graphs: int,
    plan_path: str | os.PathLike,
    key: str,
    *,
    teacher: torch.nn.Module | None = None,
    target_gb: float | None = None,
    target_device: str | None = None,
    amp: bool = False,
    count_process: bool | None = None,
    log: Callable[[str], None] = print,
) -> tuple[MemoryBudget, BatchPlan]:
    """Measure (or reuse) the activation cost of ``model`` on ``split`` and size its batches.

    The plan is cached at ``plan_path`` under ``key`` (model, data shape, device), so a resumed
    job and later stages reuse it instead of probing again. ``target_device``/``target_gb`` plan
    for a device other than the one probed on (preflight on a CPU login node for a GPU job):
    live tensor bytes are the same on both, only the fixed overheads differ.

    ``count_process`` (default: when the target is the CPU) budgets the process itself: its
    resident baseline and the mapped cache as static lines, glibc's slack as a fixed one. False
    budgets tensors only, as on an accelerator (a benchmark emulating a small device).
    """
    request = PlanRequest(device, safety_factor, plan_path, key, target_gb, target_device, count_process, log)
    return plan_memory(GraphBatchWorkload(model, split, loss_fn, device, max_graphs, teacher, amp, log), request)


class GraphBatchWorkload(Workload[BatchPlan]):
    """Batches of whole graphs: what the CAN planner adds to the skeleton of ``pipeline.memory.planner``."""

    def __init__(self, model: torch.nn.Module, split: Any,
                 loss_fn: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, Any]], device: torch.device,
                 max_graphs: int, teacher: torch.nn.Module | None, amp: bool, log: Callable[[str], None]) -> None:
        self.model, self.split, self.device, self.max_graphs = model, split, device, max_graphs
        self.teacher, self.log = teacher, log
        self.step = backward_step(model, loss_fn, device, amp)
        self.gen = torch.Generator().manual_seed(0)   # one stream for every measurement of this plan
        self.checkpointing = False

    def probes(self, variant: Any) -> Probes:
        self.checkpointing = bool(variant)
        if hasattr(self.model, "gradient_checkpointing"):
            self.model.gradient_checkpointing = self.checkpointing
        sizes = [g for g in PROBE_GRAPHS if g <= max(len(self.split), 2)] or [1, 2]
        return Probes((self._batch(n) for n in sizes), self.step, lambda b: (b.num_nodes, b.num_edges))

    def _batch(self, n: int) -> Any:
        idx = torch.randperm(len(self.split), generator=self.gen)[: min(n, len(self.split))]
        return self.split.collate(idx).to(self.device)

    def fit(self, points: list[ProbePoint]) -> Measured:
        fit = fit_line(points)
        fit.mode = "measured, gradient checkpointing" if self.checkpointing else "measured"
        return Measured(fit)

    def host_lines(self) -> dict[str, int]:
        # Pages of the mapped cache become resident as batches touch them.
        return {"graph cache pages (host)": tensor_bytes(getattr(self.split, "t", {}).values())}

    def size(self, budget: MemoryBudget, measured: Measured) -> BatchPlan:
        # Graph counts use the 95th-percentile graph; the node budget assumes the densest graph's
        # edges per node, so a batch of edge-dense windows (flooding) still fits.
        nodes, edges = self.split.nodes_per_graph().double(), self.split.edges_per_graph().double()
        densest = float((edges / nodes.clamp_min(1)).max()) if len(self.split) else 1.0
        plan = plan_batches(budget, float(nodes.quantile(0.95)), float(edges.quantile(0.95)),
                            max_graphs=self.max_graphs, edges_per_node=densest)
        plan.checkpointing = self.checkpointing
        return plan

    def refine(self, first: Attempt[BatchPlan], measure: Callable[[Any], Attempt[BatchPlan]]) -> Attempt[BatchPlan]:
        """Below USEFUL_GRAPHS per batch, measure again with gradient checkpointing; keep it if it fits more."""
        useful = min(USEFUL_GRAPHS, self.max_graphs)
        if first.plan.graphs >= useful or not hasattr(self.model, "gradient_checkpointing"):
            return first
        self.log(f"plan of {first.plan.graphs} graphs per batch is below {useful}; "
                 "measuring with gradient checkpointing")
        with_ckpt = measure(True)
        if with_ckpt.plan.graphs > first.plan.graphs:
            return with_ckpt
        self.model.gradient_checkpointing = False
        return first

    def load(self, raw: dict[str, Any]) -> BatchPlan:
        return BatchPlan(**raw)

    def reused(self, plan: BatchPlan) -> str:
        if hasattr(self.model, "gradient_checkpointing"):
            self.model.gradient_checkpointing = plan.checkpointing
        return f"{plan.graphs} graphs / {plan.max_nodes} nodes per batch"

    def describe(self, plan: BatchPlan) -> str:
        return (f"plan: {plan.graphs} graphs, <= {plan.max_nodes} nodes per batch "
                f"({plan.reason}; predicted peak {format_bytes(plan.predicted_bytes)})")

    def warning(self, plan: BatchPlan) -> str | None:
        if plan.graphs >= min(USEFUL_GRAPHS, self.max_graphs):
            return None
        return (f"warning: the plan allows only {plan.graphs} graphs per batch"
                f"{' even with gradient checkpointing' if plan.checkpointing else ''}; levers: raise safety_factor, "
                "lower model.hidden / model.heads, request more memory, or offload the teacher")


def save_plan(path: str | os.PathLike, budget: MemoryBudget, plan: BatchPlan, key: str) -> None:
    write_plan(path, key, budget, plan)


def load_plan(path: str | os.PathLike, key: str) -> tuple[MemoryBudget, BatchPlan] | None:
    cached = cached_plan(path, key)
    return None if cached is None else (cached[0], BatchPlan(**cached[1]))
