"""Batch plans of the CAN stages: graphs and nodes per batch whose measured activation memory fits the budget."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from pipeline import io
from pipeline.memory import (
    MemoryBudget,
    _fmt,
    cached_plan,
    device_memory,
    fixed_overhead,
    host_process_lines,
    measure_activation_cost,
    process_baseline,
    static_costs,
    tensor_bytes,
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
            f"static memory ({_fmt(budget.static_total + budget.fixed_total)}) exceeds the budget "
            f"({_fmt(budget.total * budget.safety_factor)}): lower hidden dims, offload the teacher, "
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
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


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
    cached = load_plan(plan_path, key)
    if cached is not None:
        if hasattr(model, "gradient_checkpointing"):
            model.gradient_checkpointing = cached[1].checkpointing
        log(f"memory plan reused from {plan_path}: {cached[1].graphs} graphs / {cached[1].max_nodes} nodes per batch")
        return cached
    nodes, edges = split.nodes_per_graph().double(), split.edges_per_graph().double()
    densest = float((edges / nodes.clamp_min(1)).max()) if len(split) else 1.0
    gen = torch.Generator().manual_seed(0)

    def make_batch(n: int):
        idx = torch.randperm(len(split), generator=gen)[: min(n, len(split))]
        return split.collate(idx).to(device)

    def run_step(batch) -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            loss, _ = loss_fn(model, batch)
        loss.backward()

    sizes = [g for g in PROBE_GRAPHS if g <= max(len(split), 2)] or [1, 2]
    mem = device_memory(device, target_gb)
    target = torch.device(target_device) if target_device else device
    if count_process is None:
        count_process = target.type == "cpu"
    baseline = process_baseline(model) if count_process else 0   # before probes grow the heap

    def measure_and_plan(checkpointing: bool) -> tuple[MemoryBudget, BatchPlan]:
        if hasattr(model, "gradient_checkpointing"):
            model.gradient_checkpointing = checkpointing
        rng_state = torch.get_rng_state()
        fit = measure_activation_cost(run_step, make_batch, sizes, device, count=lambda b: (b.num_nodes, b.num_edges))
        torch.set_rng_state(rng_state)   # probing must not shift the training RNG stream
        model.zero_grad(set_to_none=True)
        fit.mode = "measured, gradient checkpointing" if checkpointing else "measured"
        fixed, static = fixed_overhead(target, mem.total), static_costs(model, teacher=teacher)
        if count_process:
            host_fixed, host_static = host_process_lines(baseline, mem.total)
            fixed.update(host_fixed)
            static.update(host_static)
            # Pages of the mapped cache become resident as batches touch them.
            static["graph cache pages (host)"] = tensor_bytes(getattr(split, "t", {}).values())
        budget = MemoryBudget(device=str(target), total=mem.total, total_source=mem.source,
                              safety_factor=safety_factor, fixed=fixed, static=static, activation=fit)
        # Graph counts use the 95th-percentile graph; the node budget assumes the densest graph's
        # edges per node, so a batch of edge-dense windows (flooding) still fits.
        plan = plan_batches(budget, float(nodes.quantile(0.95)), float(edges.quantile(0.95)), max_graphs=max_graphs,
                            edges_per_node=densest)
        plan.checkpointing = checkpointing
        return budget, plan

    budget, plan = measure_and_plan(False)
    useful = min(USEFUL_GRAPHS, max_graphs)
    if plan.graphs < useful and hasattr(model, "gradient_checkpointing"):
        log(f"plan of {plan.graphs} graphs per batch is below {useful}; measuring with gradient checkpointing")
        with_ckpt = measure_and_plan(True)
        if with_ckpt[1].graphs > plan.graphs:
            budget, plan = with_ckpt
        else:
            model.gradient_checkpointing = False
    save_plan(plan_path, budget, plan, key)
    log(f"memory budget:\n{budget.table()}\nplan: {plan.graphs} graphs, <= {plan.max_nodes} nodes per batch "
        f"({plan.reason}; predicted peak {_fmt(plan.predicted_bytes)})")
    if plan.graphs < min(USEFUL_GRAPHS, max_graphs):
        log(f"warning: the plan allows only {plan.graphs} graphs per batch"
            f"{' even with gradient checkpointing' if plan.checkpointing else ''}; levers: raise safety_factor, "
            "lower model.hidden / model.heads, request more memory, or offload the teacher")
    return budget, plan


def save_plan(path: str | os.PathLike, budget: MemoryBudget, plan: BatchPlan, key: str) -> None:
    payload = {"key": key, "budget": asdict(budget), "plan": asdict(plan)}
    io.write_json(path, payload)


def load_plan(path: str | os.PathLike, key: str) -> tuple[MemoryBudget, BatchPlan] | None:
    cached = cached_plan(path, key)
    return None if cached is None else (cached[0], BatchPlan(**cached[1]))
