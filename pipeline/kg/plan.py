"""The memory plan of a knowledge-graph training stage: seed edges per step, per edge type.

Probes are real sampled batches: four with the training mix of edge types at growing seed counts
(they also fit how batch content grows with the seeds) and four with a skewed, random mix (so the
per-type costs can be told apart). Each runs forward and backward under the live-tensor tracker
(``max_memory_allocated`` on CUDA) in the skeleton of ``pipeline.memory.planner``; this module fits
a cost per node type and per edge type (and per count of what the trimmed layers work on,
``cost_counts``) and picks the largest seed count whose predicted peak fits.
The plan is saved in the stage folder under a key of model, graph, sampling and device, with the
per-type fit and the batch composition beside it, and reused on resume.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from pipeline import io
from pipeline.kg.cache import KGGraph
from pipeline.kg.sampler import LinkBatchLoader, allocate_seeds
from pipeline.memory.budget import MemoryBudget, cached_plan, format_bytes, write_plan
from pipeline.memory.limits import device_memory
from pipeline.memory.measure import (
    HeteroActivationFit,
    HeteroProbePoint,
    fit_hetero_line,
)
from pipeline.memory.planner import (
    Measured,
    PlanRequest,
    Probes,
    Workload,
    backward_step,
    plan_memory,
)

COST_MODEL_VERSION = 2
"""Part of a plan's key: a plan cached under an older cost model (version 1 did not count the work of
the trimmed layers) is measured again rather than reused."""
PROBE_SEEDS = (16, 32, 64, 128)
SKEWED_PROBES = 4
REACH = "@"
"""Marks a count of what a trimmed layer works on: ``<node type>@<r>`` nodes within r hops of a seed,
``<message type>@0`` edges into the seeds (see ``cost_counts``)."""


def cost_counts(batch: Any) -> tuple[dict[str, int], dict[str, int]]:
    """What the cost model counts in a batch: its nodes per type and edges per message type, and
    what the trimmed layers work on.

    ``KGEncoder.forward`` keeps, in each layer, only the nodes that can still reach a seed, so a
    layer's work grows with the nodes within r hops of a seed (one count per type and reach r) and
    the last one's with the edges into the seeds (one per message type). Once a sample covers most
    of the graph its totals stop growing while these still grow with the seeds: without them the
    fit under-predicted such batches by 9-22% (synthetic PrimeKG at 0.4% and 5% scale, 8x the
    largest probe's seeds; ``make gpu-check``). A batch without hop counts (PyG's torch-sparse
    sampler) is counted by its totals alone.
    """
    nodes, edges = batch.node_counts(), batch.edge_counts()
    hops = getattr(batch, "hops", None)
    if not hops:
        return nodes, edges
    for t, within in hops.items():
        nodes.update({f"{t}{REACH}{r}": int(within[r]) for r in range(len(within) - 1)})
    edges.update({f"{'__'.join(mt)}{REACH}0": int((ei[1] < hops[mt[2]][0]).sum())
                  for mt, ei in batch.edge_index.items() if mt[2] in hops})
    return nodes, edges


def kg_plan_key(model: torch.nn.Module, graph: KGGraph, loader: LinkBatchLoader, device: torch.device,
                safety_factor: float, max_seed_edges: int, target_gb: float | None = None) -> str:
    payload = {"model": type(model).__name__, "kwargs": dict(getattr(model, "model_kwargs", {})),
               "graph": graph.manifest["key"], "fanouts": loader.fanouts, "neg_ratio": loader.neg_ratio,
               "device": str(device), "device_total": device_memory(device, target_gb).total,
               "safety_factor": safety_factor, "max_seed_edges": max_seed_edges,
               "target_gb": target_gb, "cost_model": COST_MODEL_VERSION}
    return io.digest(payload)


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
    request = PlanRequest(device, safety_factor, plan_path, key, target_gb, target_device, log=log)
    return plan_memory(LinkBatchWorkload(model, loader, loss_fn, device, max_seed_edges, teacher, amp), request)


def describe_plan(graph: KGGraph, plan: HeteroBatchPlan) -> str:
    """The plan as text: seed edges and expected batch nodes per type, by their names."""
    nodes = ", ".join(f"{graph.type_name(t)} {n}" for t, n in sorted(plan.nodes.items()))
    return (f"plan: {plan.seed_edges} seed edges per step ({plan.reason}; predicted peak "
            f"{format_bytes(plan.predicted_bytes)}); expected batch nodes per type: {nodes}")


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
        # a count of a trimmed layer (``cost_counts``) is capped by its type's total
        nodes = {t: min(a + b * seeds, self.node_cap.get(t.split(REACH)[0], np.inf))
                 for t, (a, b) in self.node_line.items()}
        edges = {r: min(a + b * seeds, self.edge_cap.get(r.split(REACH)[0], np.inf))
                 for r, (a, b) in self.edge_line.items()}
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
            f"a batch of one seed edge needs {format_bytes(predicted(1))} but only "
            f"{format_bytes(max(usable, 0))} is left for "
            f"activations after {format_bytes(budget.static_total + budget.fixed_total)} of static memory: lower "
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
    return HeteroBatchPlan(seed_edges=lo, seeds_per_edge_type=allocate(lo),
                           nodes={t: int(n) for t, n in nodes.items() if REACH not in t},
                           edges={r: int(e) for r, e in edges.items() if REACH not in r},
                           predicted_bytes=int(predicted(lo)), reason=reason)


@dataclass
class HeteroFit:
    """The KG planner's own fit, saved beside the budget as the plan file's "fit" and "composition"."""

    fit: HeteroActivationFit
    composition: CompositionFit


class LinkBatchWorkload(Workload[HeteroBatchPlan]):
    """Link batches of sampled neighbourhoods: what the KG planner adds to ``pipeline.memory.planner``."""

    teacher_in_host_baseline = True
    """A distilling teacher runs on every batch from the training device; on the host its parameters
    are already in the process's resident baseline."""

    def __init__(self, model: torch.nn.Module, loader: LinkBatchLoader, loss_fn: Callable, device: torch.device,
                 max_seed_edges: int, teacher: torch.nn.Module | None, amp: bool) -> None:
        self.model, self.loader, self.max_seed_edges, self.teacher = model, loader, max_seed_edges, teacher
        self.counts = {k: n for k, n in loader.train_counts.items() if n}
        self.sizes = probe_sizes(sum(self.counts.values()))
        self.step = backward_step(model, loss_fn, device, amp, move_batch=True)
        self.gen, self.rng = torch.Generator().manual_seed(0), np.random.default_rng(0)

    def probes(self, variant: Any) -> Probes:
        return Probes(self._batches(), self.step, cost_counts, HeteroProbePoint)

    def _batches(self) -> Iterator[Any]:
        for s in self.sizes:
            yield self.loader.random_batch(allocate_seeds(self.counts, s), self.gen)
        mid = self.sizes[len(self.sizes) // 2]
        for _ in range(SKEWED_PROBES):
            weights = self.rng.dirichlet(np.full(len(self.counts), 0.5))
            yield self.loader.random_batch({k: max(1, min(n, int(round(mid * w))))
                                            for (k, n), w in zip(self.counts.items(), weights)}, self.gen)

    def fit(self, points: list[HeteroProbePoint]) -> Measured:
        fit = fit_hetero_line(points)
        graph = self.loader.graph
        composition = fit_composition(self.sizes, fit.points[:len(self.sizes)], dict(graph.num_nodes),
                                      {"__".join(mt): int(col.numel()) for mt, (_, col) in graph.csc.items()})
        return Measured(fit.pooled(), HeteroFit(fit, composition))

    def host_lines(self) -> dict[str, int]:
        return {"graph arrays (host)": self.loader.graph.host_bytes()}

    def size(self, budget: MemoryBudget, measured: Measured) -> HeteroBatchPlan:
        names = {k: f"e{k}" for k in self.counts}

        def allocate(total: int) -> dict[str, int]:
            return {names[k]: n for k, n in allocate_seeds(self.counts, total).items()}

        detail: HeteroFit = measured.detail
        return plan_hetero_batches(budget, detail.fit, detail.composition, allocate, self.max_seed_edges)

    def load(self, raw: dict[str, Any]) -> HeteroBatchPlan:
        return HeteroBatchPlan(**raw)

    def reused(self, plan: HeteroBatchPlan) -> str:
        return f"{plan.seed_edges} seed edges per step"

    def describe(self, plan: HeteroBatchPlan) -> str:
        return describe_plan(self.loader.graph, plan)


def save_hetero_plan(path: str | os.PathLike, budget: MemoryBudget, fit: HeteroActivationFit,
                     composition: CompositionFit, plan: HeteroBatchPlan, key: str) -> None:
    write_plan(path, key, budget, plan, HeteroFit(fit, composition))


def load_hetero_plan(path: str | os.PathLike, key: str) -> tuple[MemoryBudget, HeteroBatchPlan] | None:
    """The cached plan for ``key`` (model, graph, device, budget), or None."""
    cached = cached_plan(path, key)
    return None if cached is None else (cached[0], HeteroBatchPlan(**cached[1]))
