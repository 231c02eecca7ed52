"""The memory plan of a knowledge-graph training stage: seed edges per step, per edge type.

Probes are real sampled batches: four with the training mix of edge types at growing seed counts
(they also fit how batch content grows with the seeds) and four with a skewed, random mix (so the
per-type costs can be told apart). Each runs forward and backward under the live-tensor tracker
(``max_memory_allocated`` on CUDA); ``pipeline.memory`` fits a cost per node type and per edge
type and picks the largest seed count whose predicted peak fits. The plan is saved in the stage
folder under a key of model, graph, sampling and device, and reused on resume.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from pipeline import io
from pipeline.kg.cache import KGGraph
from pipeline.kg.sampler import LinkBatchLoader, allocate_seeds
from pipeline.memory import (
    HeteroActivationFit,
    HeteroProbePoint,
    MemoryBudget,
    _fmt,
    cached_plan,
    device_memory,
    fixed_overhead,
    host_process_lines,
    measure_hetero_activation_cost,
    process_baseline,
    static_costs,
)

PROBE_SEEDS = (16, 32, 64, 128)
SKEWED_PROBES = 4


def kg_plan_key(model: torch.nn.Module, graph: KGGraph, loader: LinkBatchLoader, device: torch.device,
                safety_factor: float, max_seed_edges: int, target_gb: float | None = None) -> str:
    payload = {"model": type(model).__name__, "kwargs": dict(getattr(model, "model_kwargs", {})),
               "graph": graph.manifest["key"], "fanouts": loader.fanouts, "neg_ratio": loader.neg_ratio,
               "device": str(device), "device_total": device_memory(device, target_gb).total,
               "safety_factor": safety_factor, "max_seed_edges": max_seed_edges,
               "target_gb": target_gb}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def probe_sizes(total_train: int) -> list[int]:
    sizes = [s for s in PROBE_SEEDS if s <= total_train]
    if len(sizes) < 2:
        sizes = sorted({max(1, total_train // 4), max(2, total_train // 2)})
    return sizes


def plan_kg_batches(model: torch.nn.Module, loader: LinkBatchLoader, loss_fn: Callable, device: torch.device,
                    safety_factor: float, max_seed_edges: int, plan_path: str | os.PathLike, key: str, *,
                    teacher: torch.nn.Module | None = None, target_gb: float | None = None,
                    target_device: str | None = None, amp: bool = False,
                    log: Callable[[str], None] = print) -> tuple[MemoryBudget, HeteroBatchPlan]:
    """Measure (or reuse) the per-type activation costs of ``model`` and size its link batches."""
    cached = load_hetero_plan(plan_path, key)
    if cached is not None:
        log(f"memory plan reused from {plan_path}: {cached[1].seed_edges} seed edges per step")
        return cached
    graph = loader.graph
    baseline = process_baseline(model)
    counts = {k: n for k, n in loader.train_counts.items() if n}
    sizes = probe_sizes(sum(counts.values()))
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def probes():
        for s in sizes:
            yield loader.random_batch(allocate_seeds(counts, s), gen)
        mid = sizes[len(sizes) // 2]
        for _ in range(SKEWED_PROBES):
            weights = rng.dirichlet(np.full(len(counts), 0.5))
            yield loader.random_batch({k: max(1, min(n, int(round(mid * w))))
                                       for (k, n), w in zip(counts.items(), weights)}, gen)

    def run_step(batch) -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            loss, _ = loss_fn(model, batch.to(device))
        loss.backward()

    rng_state = torch.get_rng_state()
    fit = measure_hetero_activation_cost(run_step, probes(), device,
                                         count=lambda b: (b.node_counts(), b.edge_counts()))
    torch.set_rng_state(rng_state)  # probing must not shift the training RNG stream
    model.zero_grad(set_to_none=True)
    composition = fit_composition(sizes, fit.points[:len(sizes)], dict(graph.num_nodes),
                                  {"__".join(mt): int(col.numel()) for mt, (_, col) in graph.csc.items()})
    mem = device_memory(device, target_gb)
    target = torch.device(target_device) if target_device else device
    # A distilling teacher runs on every batch from the training device; on the host its parameters
    # are already in the process's resident baseline.
    static = static_costs(model, teacher=teacher if target.type != "cpu" else None)
    fixed = fixed_overhead(target, mem.total)
    if target.type == "cpu":
        # On the host, the process itself (interpreter, torch, the cache's pages) shares the budget.
        host_fixed, host_static = host_process_lines(baseline, mem.total)
        static["graph arrays (host)"] = graph.host_bytes()
        static.update(host_static)
        fixed.update(host_fixed)
    budget = MemoryBudget(device=str(target), total=mem.total, total_source=mem.source, safety_factor=safety_factor,
                          fixed=fixed, static=static, activation=fit.pooled())
    names = {k: f"e{k}" for k in counts}

    def allocate(total: int) -> dict[str, int]:
        return {names[k]: n for k, n in allocate_seeds(counts, total).items()}

    plan = plan_hetero_batches(budget, fit, composition, allocate, max_seed_edges)
    save_hetero_plan(plan_path, budget, fit, composition, plan, key)
    log(f"memory budget:\n{budget.table()}\n{describe_plan(graph, plan)}")
    return budget, plan


def describe_plan(graph: KGGraph, plan: HeteroBatchPlan) -> str:
    """The plan as text: seed edges and expected batch nodes per type, by their names."""
    nodes = ", ".join(f"{graph.type_name(t)} {n}" for t, n in sorted(plan.nodes.items()))
    return (f"plan: {plan.seed_edges} seed edges per step ({plan.reason}; predicted peak "
            f"{_fmt(plan.predicted_bytes)}); expected batch nodes per type: {nodes}")


def plan_summary(plan: HeteroBatchPlan) -> dict[str, Any]:
    return {"seed_edges": plan.seed_edges, "reason": plan.reason, "nodes_per_type": plan.nodes,
            "predicted_mb": round(plan.predicted_bytes / 2**20, 1)}


@dataclass
class CompositionFit:
    """Expected batch content as a line in the seed count, capped at the graph's totals.

    Linear in the seeds overestimates large batches (their neighbourhoods overlap more), which
    errs on the safe side.
    """

    node_line: dict[str, tuple[float, float]]
    """Node type -> (intercept, slope) of nodes per batch against seed edges."""
    edge_line: dict[str, tuple[float, float]]
    node_cap: dict[str, int]
    edge_cap: dict[str, int]

    def at(self, seeds: int) -> tuple[dict[str, float], dict[str, float]]:
        nodes = {t: min(a + b * seeds, self.node_cap.get(t, np.inf)) for t, (a, b) in self.node_line.items()}
        edges = {r: min(a + b * seeds, self.edge_cap.get(r, np.inf)) for r, (a, b) in self.edge_line.items()}
        return nodes, edges


def fit_composition(seeds: list[int], points: list[HeteroProbePoint], node_cap: dict[str, int],
                    edge_cap: dict[str, int]) -> CompositionFit:
    def line(values: list[float]) -> tuple[float, float]:
        x, y = np.asarray(seeds, dtype=float), np.asarray(values, dtype=float)
        if np.ptp(x) == 0:
            return 0.0, float(y.mean() / max(x.mean(), 1))
        slope, intercept = np.polyfit(x, y, 1)
        if slope < 0:
            return float(y.max()), 0.0
        return max(float(intercept), 0.0), float(slope)

    node_types = sorted({t for p in points for t in p.nodes})
    edge_types = sorted({r for p in points for r in p.edges})
    return CompositionFit({t: line([p.nodes.get(t, 0) for p in points]) for t in node_types},
                          {r: line([p.edges.get(r, 0) for p in points]) for r in edge_types},
                          dict(node_cap), dict(edge_cap))


@dataclass
class HeteroBatchPlan:
    """Seed edges per step (and per edge type), the batch sizes per node type they lead to, and why."""

    seed_edges: int
    seeds_per_edge_type: dict[str, int]
    nodes: dict[str, int]
    """Expected nodes of each type in a batch: the batch size per node type."""
    edges: dict[str, int]
    predicted_bytes: int
    reason: str


def plan_hetero_batches(budget: MemoryBudget, fit: HeteroActivationFit, composition: CompositionFit,
                        allocate: Callable[[int], dict[str, int]], max_seed_edges: int) -> HeteroBatchPlan:
    """The most seed edges per step (up to ``max_seed_edges``) whose predicted peak fits the budget."""
    usable = budget.usable_for_activations

    def predicted(seeds: int) -> float:
        return fit.predict(*composition.at(seeds))

    if usable <= 0 or predicted(1) > usable:
        raise MemoryError(
            f"a batch of one seed edge needs {_fmt(predicted(1))} but only {_fmt(max(usable, 0))} is left for "
            f"activations after {_fmt(budget.static_total + budget.fixed_total)} of static memory: lower "
            "kg_model dims or kg.fanouts, or request more memory")
    lo, hi = 1, max(1, max_seed_edges)
    if predicted(hi) <= usable:
        lo, reason = hi, "capped by kg.max_seed_edges"
    else:
        reason = "memory budget"
        while lo < hi - 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if predicted(mid) <= usable else (lo, mid)
    nodes, edges = composition.at(lo)
    return HeteroBatchPlan(seed_edges=lo, seeds_per_edge_type=allocate(lo), nodes={t: int(n) for t, n in nodes.items()},
                           edges={r: int(e) for r, e in edges.items()}, predicted_bytes=int(predicted(lo)),
                           reason=reason)


def save_hetero_plan(path: str | os.PathLike, budget: MemoryBudget, fit: HeteroActivationFit,
                     composition: CompositionFit, plan: HeteroBatchPlan, key: str) -> None:
    io.write_json(path, {"key": key, "budget": asdict(budget), "fit": asdict(fit),
                         "composition": asdict(composition), "plan": asdict(plan)})


def load_hetero_plan(path: str | os.PathLike, key: str) -> tuple[MemoryBudget, HeteroBatchPlan] | None:
    """The cached plan for ``key`` (model, graph, device, budget), or None."""
    cached = cached_plan(path, key)
    return None if cached is None else (cached[0], HeteroBatchPlan(**cached[1]))
