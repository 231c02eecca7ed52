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
from typing import Any, Callable

import numpy as np
import torch

from pipeline.kg.cache import KGGraph
from pipeline.kg.sampler import LinkBatchLoader, allocate_seeds
from pipeline.memory import (HeteroBatchPlan, MemoryBudget, _fmt, device_memory, fit_composition, fixed_overhead,
                             host_process_lines, load_hetero_plan, measure_hetero_activation_cost, plan_hetero_batches,
                             process_baseline, save_hetero_plan, static_costs)

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
