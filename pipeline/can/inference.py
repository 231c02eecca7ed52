"""Chunked no-grad inference over a cached split, with chunk sizes from the memory budget.

Teacher-output caches, difficulty scores and embedding exports run a model over a whole split.
The chunk size is planned like a training batch (``pipeline.memory``): the forward pass is probed
at a few sizes under the live-tensor tracker (``max_memory_allocated`` on CUDA), a line
bytes = a + b*nodes + c*edges is fit, and a chunk gets as many graphs as the device budget
leaves room for. ``cap_bytes`` bounds that further, e.g. by the planned peak of the stage's own
training step, so precomputing outputs never needs more memory than training does. Device memory
is released between chunks; results are gathered on the CPU.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import torch
from torch import nn

from pipeline.can.data.cache import GraphBatch, GraphSplit
from pipeline.can.data.loader import GraphLoader
from pipeline.can.plan import PROBE_GRAPHS, BatchPlan, plan_batches
from pipeline.memory import (
    MemoryBudget,
    device_memory,
    fixed_overhead,
    free_device_memory,
    measure_activation_cost,
    tensor_bytes,
)

Forward = Callable[[nn.Module, GraphBatch], Any]
"""(model in eval mode, batch on device) -> a tensor or a dict of tensors with one row per graph or node."""


def plan_inference(model: nn.Module, split: GraphSplit, forward: Forward, device: torch.device,
                   safety_factor: float, *, cap_bytes: int | None = None, max_graphs: int | None = None,
                   edges_per_node: float | None = None, log: Callable[[str], None] = lambda msg: None) -> BatchPlan:
    """Graphs and nodes per chunk for ``forward`` over ``split`` on ``device``, at most ``max_graphs``.

    Chunks are filled to a node budget; ``edges_per_node`` (default: the densest graph of ``split``)
    bounds the edges a node brings, so one plan also holds for other splits up to that density.
    """
    model.eval()
    nodes, edges = split.nodes_per_graph().double(), split.edges_per_graph().double()
    gen = torch.Generator().manual_seed(0)

    def make_batch(n: int) -> GraphBatch:
        return split.collate(torch.randperm(len(split), generator=gen)[: min(n, len(split))]).to(device)

    def run(batch: GraphBatch) -> None:
        with torch.no_grad():
            forward(model, batch)

    sizes = [g for g in PROBE_GRAPHS if g <= max(len(split), 2)] or [1, 2]
    fit = measure_activation_cost(run, make_batch, sizes, device, count=lambda b: (b.num_nodes, b.num_edges))
    fit.mode = "measured (inference)"
    mem = device_memory(device)
    budget = MemoryBudget(device=str(device), total=mem.total, total_source=mem.source, safety_factor=safety_factor,
                          fixed=fixed_overhead(device, mem.total),
                          static={"parameters": tensor_bytes(model.parameters())}, activation=fit)
    density = edges_per_node if edges_per_node is not None else densest(split)
    p95_nodes, p95_edges = float(nodes.quantile(0.95)), float(edges.quantile(0.95))
    limit = min(max_graphs or len(split), max(len(split), 1))
    plan = plan_batches(budget, p95_nodes, p95_edges, max_graphs=limit, edges_per_node=density)
    if plan.reason != "memory budget":
        plan.reason = "the whole split fits" if limit >= len(split) else f"capped at {limit} graphs"
    if cap_bytes is not None and plan.predicted_bytes > cap_bytes:
        per_node = fit.per_node + fit.per_edge * density
        max_nodes = max(1, int((cap_bytes - fit.base) // max(per_node, 1.0)))
        graphs = max(1, int(max_nodes // max(p95_nodes, 1.0)))
        if max_nodes < plan.max_nodes:
            plan = BatchPlan(max_nodes=max_nodes, max_edges=max(1, int(max_nodes * density)),
                             graphs=min(graphs, plan.graphs),
                             predicted_bytes=int(fit.predict(max_nodes, max_nodes * density)),
                             reason="capped by the training step's planned peak")
    log(f"inference chunks: {plan.graphs} graphs / <= {plan.max_nodes} nodes ({plan.reason}; "
        f"predicted {plan.predicted_bytes / 2**20:,.1f} MiB of activations)")
    return plan


def densest(split: GraphSplit) -> float:
    """Largest edges-per-node ratio of any graph of ``split`` (1.0 for an empty split)."""
    if len(split) == 0:
        return 1.0
    return float((split.edges_per_graph().double() / split.nodes_per_graph().double().clamp_min(1)).max())


def chunks(split: GraphSplit, plan: BatchPlan, indices: torch.Tensor | None = None) -> GraphLoader:
    """The split (or ``indices`` of it) in index order, cut into the plan's chunks."""
    return GraphLoader(split, plan.graphs, indices=indices, max_nodes=plan.max_nodes)


@torch.no_grad()
def run_chunked(model: nn.Module, forward: Forward, split: GraphSplit, plan: BatchPlan, device: torch.device,
                indices: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, Any]]:
    """Yield (graph indices, outputs on the CPU) chunk by chunk, freeing device memory in between."""
    model.eval()
    loader = chunks(split, plan, indices)
    for index in loader.batches():
        out = _to_cpu(forward(model, split.collate(index).to(device)))
        if device.type != "cpu":
            free_device_memory(device)
        yield index, out


def gather(model: nn.Module, forward: Forward, split: GraphSplit, plan: BatchPlan,
           device: torch.device) -> dict[str, torch.Tensor]:
    """Every output of ``forward`` over the whole split, concatenated in graph order."""
    parts: dict[str, list[torch.Tensor]] = {}
    for _, out in run_chunked(model, forward, split, plan, device):
        for key, value in (out if isinstance(out, dict) else {"out": out}).items():
            parts.setdefault(key, []).append(value)
    outputs = {k: torch.cat(v) for k, v in parts.items()}
    parts.clear()
    free_device_memory(device)   # the pass's transients must not stay in the job's later peaks
    return outputs


def cpu_latency_ms_per_1k(model: nn.Module, forward: Forward, split: GraphSplit, batch_size: int,
                          graphs: int = 1000, repeats: int = 3) -> float:
    """Milliseconds to run ``forward`` over 1,000 graphs on the CPU (best of ``repeats``, after a warm-up).

    The first ``graphs`` graphs of ``split`` are used (cycled if the split is smaller), in batches
    of ``batch_size``, with the thread count the process has; the model is moved to the CPU.
    """
    if len(split) == 0:
        return float("nan")
    model = model.cpu().eval()
    index = torch.arange(graphs) % len(split)
    batches = [split.collate(i) for i in torch.split(index, batch_size)]
    best = float("inf")
    with torch.no_grad():
        for b in batches[:1]:
            forward(model, b)
        for _ in range(repeats):
            started = time.perf_counter()
            for b in batches:
                forward(model, b)
            best = min(best, time.perf_counter() - started)
    return best * 1000 * 1000 / graphs


def _to_cpu(out: Any) -> Any:
    if isinstance(out, dict):
        return {k: v.detach().float().cpu() for k, v in out.items()}
    return out.detach().float().cpu()


def inference_node_cap(upstream: dict[str, dict[str, Any]]) -> int | None:
    """The smallest node cap an upstream training stage planned for its batches. A forward pass
    without gradients needs less memory than the training step that cap was sized for, so batches
    under it fit wherever those stages trained; None when no stage recorded a plan."""
    plans = [(record or {}).get("batch_plan") for record in upstream.values()]
    caps = [int(plan["max_nodes"]) for plan in plans if isinstance(plan, dict) and plan.get("max_nodes")]
    return min(caps) if caps else None
