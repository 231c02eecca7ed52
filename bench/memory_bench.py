"""Memory-planner accuracy: predicted vs measured peak memory of a training step.

The planner fits bytes = a + b*nodes + c*edges from probe batches of 8..64 graphs. This benchmark
then measures forward + backward at batch sizes well beyond the probes (extrapolation, the case
that matters) and reports each prediction's error. Measurement: on CPU the live-tensor tracker
(exact bytes of live tensor storages, the quantity the CUDA caching allocator's
``max_memory_allocated`` reports); on CUDA ``max_memory_allocated`` itself.

It also checks the promise the plan makes: at safety_factor 0.9, batches drawn by the loader
with the planned node budget never exceed the budget, for several device sizes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from bench.data_bench import ensure_cache, row
from pipeline import io, memory
from pipeline.can import plan as can_plan
from pipeline.can.data.cache import GraphSplit
from pipeline.can.data.loader import GraphLoader
from pipeline.kg import plan as kg_plan

EVAL_GRAPHS = (96, 128, 192, 256, 384, 512)
BUDGETS_MB = (64, 128, 256, 512)
TOLERANCE = {"cpu": 0.20, "cuda": 0.15}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def accuracy_rows(name: str, model: torch.nn.Module, split: GraphSplit,
                  loss_fn: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, Any]],
                  indices: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """``indices``: the graphs the stage trains on (all of the split by default); the plan itself
    probes the whole split, as the stage's does."""
    device = _device()
    pool = torch.arange(len(split)) if indices is None else indices
    model.to(device)
    tol = TOLERANCE[device.type]
    budget, _ = _plan(model, split, loss_fn, device, target_gb=None)
    fit = budget.activation
    rows = [row(name, f"fit per node (B), measured on {device.type}", round(fit.per_node)),
            row(name, "fit per edge (B)", round(fit.per_edge)),
            row(name, "fit base (B)", round(fit.base))]
    gen = torch.Generator().manual_seed(1)

    def step(batch):
        model.train()
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch)[0].backward()

    worst = 0.0
    for graphs in EVAL_GRAPHS:
        batch = split.collate(pool[torch.randperm(len(pool), generator=gen)[:graphs]]).to(device)
        measured = memory.measure_step_peak(lambda: step(batch), device)
        predicted = fit.predict(batch.num_nodes, batch.num_edges)
        err = predicted / measured - 1
        worst = max(worst, abs(err))
        rows.append(row(name, f"{graphs} graphs ({batch.num_nodes} nodes, {batch.num_edges} edges): "
                        f"predicted {predicted / 2**20:.2f} MiB vs measured {measured / 2**20:.2f} MiB, error",
                        round(err, 4), f"within ±{tol:.0%}", abs(err) <= tol))
    rows.append(row(name, "worst absolute error over batch sizes", round(worst, 4), f"<= {tol:.0%}", worst <= tol))
    rows += no_oom_rows(name, model, split, loss_fn, step, device, indices)
    return rows


def no_oom_rows(name, model, split, loss_fn, step, device, indices=None) -> list[dict[str, Any]]:
    """For several device sizes: plan at safety_factor 0.9, then run real batches from the loader."""
    rows = []
    static = sum(v for k, v in memory.static_costs(model).items() if not k.startswith("of which"))
    for mb in BUDGETS_MB:
        target_gb = mb / 1024
        budget, plan = _plan(model, split, loss_fn, device, target_gb)
        limit = budget.total * budget.safety_factor - budget.fixed_total
        loader = GraphLoader(split, 10**6, shuffle=True, seed=mb, indices=indices, max_nodes=plan.max_nodes)
        peak = 0
        for index in loader.batches()[:20]:
            batch = split.collate(index).to(device)
            peak = max(peak, memory.measure_step_peak(lambda: step(batch), device))
        used = peak + static
        rows.append(row(name, f"{mb} MiB device, sf 0.9: plan {plan.graphs} graphs / {plan.max_nodes} "
                        f"nodes; worst of 20 batches uses this share of the budget", round(used / limit, 4),
                        "<= 1 (no OOM)", used <= limit))
    return rows


def _plan(model, split, loss_fn, device, target_gb: float | None):
    """A fresh plan (probes measured again, nothing reused from an earlier run).

    The budget is for tensors only, as on an accelerator: the emulated devices of 64 MiB and up
    are smaller than the benchmark process itself, whose share of a CPU budget is not what these
    rows check (the real-cluster memory test does).
    """
    with tempfile.TemporaryDirectory() as tmp:
        key = can_plan.plan_key(model, split, device, 0.9, 10**6, target_gb)
        return can_plan.plan_graph_batches(model, split, loss_fn, device, 0.9, 10**6, Path(tmp) / "p.json", key,
                                           target_gb=target_gb, count_process=False, log=lambda m: None)


def gat_memory_accuracy() -> list[dict[str, Any]]:
    """The GAT teacher (set_01 profile dims) on set_01 window graphs."""
    from pipeline.can.classifier import build_model, cross_entropy_loss
    from pipeline.config import load_profile

    cache_dir = ensure_cache()
    manifest = io.read_json(cache_dir / "manifest.json")
    split = GraphSplit.open(cache_dir / manifest["splits"]["train"]["file"])
    profile = load_profile("set_01", check_paths=False)
    torch.manual_seed(0)
    model = build_model(profile, manifest, split)
    return accuracy_rows("gat_memory_accuracy", model, split, cross_entropy_loss(None))


def vgae_memory_accuracy() -> list[dict[str, Any]]:
    """The VGAE autoencoder (set_01 profile dims) on set_01 window graphs, as the autoencoder stage
    plans it (the whole train split probed) and trains it (attack-free graphs only)."""
    from pipeline.can.detector import build_vgae, normal_indices, vgae_loss
    from pipeline.config import load_profile

    cache_dir = ensure_cache()
    manifest = io.read_json(cache_dir / "manifest.json")
    split = GraphSplit.open(cache_dir / manifest["splits"]["train"]["file"])
    profile = load_profile("set_01", check_paths=False)
    torch.manual_seed(0)
    model = build_vgae(profile.vgae, manifest, split)
    return accuracy_rows("vgae_memory_accuracy", model, split, vgae_loss, indices=normal_indices(split))


# -- HGT: the heterogeneous planner --------------------------------------------------------------

HGT_SCALE = 0.02
"""Synthetic PrimeKG at 2% (~2.6k nodes): sampled batches of a few hundred seed edges do not yet
cover the graph, so batch content still grows with the seed count."""
HGT_FANOUTS = [10, 5]
HGT_EVAL_SEEDS = (24, 48, 96, 192, 256, 320)
HGT_MAX_SEED_EDGES = 1024
HGT_BUDGETS_MB = (128, 192, 256, 384)
HGT_DIMS = {"hidden": 128, "out": 128, "heads": 4}
"""The primekg teacher (HGT, 2 layers) at half its width: the full 256/512 x 8 heads costs minutes
per probe on a small shared CPU, and the per-type cost model does not depend on the width."""


def _kg_graph(scale: float, seed: int = 0):
    """The synthetic PrimeKG-shaped cache at ``scale``, built once under bench/results/cache."""
    from pipeline.kg.cache import CacheParams, KGGraph, build_cache, cache_key
    from pipeline.kg.generator import generate_primekg_like

    params = CacheParams()
    source = {"generator": "primekg-like", "scale": scale, "seed": seed}
    key = cache_key(source, params.as_dict())
    path = Path(__file__).resolve().parent / "results" / "cache" / f"kg-synthetic-{key}"
    if io.keyed_manifest(path, key) is None:
        build_cache(generate_primekg_like(scale, seed=seed), params, path, key, source)
    return KGGraph.open(path)


def _hetero_fit(plan_file: Path) -> tuple[memory.HeteroActivationFit, kg_plan.CompositionFit]:
    """The per-type cost fit and the batch-composition fit the KG planner saved with its plan."""
    data = io.read_json(plan_file)
    fit = dict(data["fit"])
    fit["points"] = [memory.HeteroProbePoint(**p) for p in fit["points"]]
    comp = data["composition"]
    composition = kg_plan.CompositionFit({t: tuple(v) for t, v in comp["node_line"].items()},
                                         {r: tuple(v) for r, v in comp["edge_line"].items()},
                                         comp["node_cap"], comp["edge_cap"])
    return memory.HeteroActivationFit(**fit), composition


def hgt_memory_accuracy() -> list[dict[str, Any]]:
    """The HGT teacher (primekg profile, narrower: HGT_DIMS) on a synthetic PrimeKG-shaped graph, planned by the
    KG planner (pipeline/kg/plan.py: per node type and per edge type costs, fit on sampled probes).

    Each row compares the fit's prediction for a real sampled batch (from its node and edge counts
    per type) with the measured peak; the plan's own prediction from the seed count alone (batch
    content from the composition fit) is reported beside it. The no-OOM rows plan at safety_factor
    0.9 for tensor budgets of several sizes and run 20 batches of the planned seed count.
    """
    from pipeline.config import load_profile
    from pipeline.kg.loss import link_loss
    from pipeline.kg.plan import kg_plan_key, plan_kg_batches
    from pipeline.kg.sampler import LinkBatchLoader, allocate_seeds
    from pipeline.kg.training import build_encoder

    name = "hgt_memory_accuracy"
    device = _device()
    tol = TOLERANCE[device.type]
    graph = _kg_graph(HGT_SCALE)
    profile = load_profile("primekg", check_paths=False)
    torch.manual_seed(0)
    model = build_encoder(profile.kg_model.teacher.model_copy(update=HGT_DIMS), graph).to(device)
    loader = LinkBatchLoader(graph, HGT_MAX_SEED_EDGES, HGT_FANOUTS, neg_ratio=1, seed=0, sampler="torch")
    loss_fn = link_loss()
    with tempfile.TemporaryDirectory() as tmp:
        # a roomy target so the plan is fit, not refused; the budgets below come from the fit
        key = kg_plan_key(model, graph, loader, device, 0.9, HGT_MAX_SEED_EDGES, target_gb=64.0)
        plan_kg_batches(model, loader, loss_fn, device, 0.9, HGT_MAX_SEED_EDGES, Path(tmp) / "plan.json", key,
                        target_gb=64.0, log=lambda m: None)
        fit, composition = _hetero_fit(Path(tmp) / "plan.json")
    rows = [row(name, f"graph: {sum(graph.num_nodes.values())} nodes of {len(graph.num_nodes)} types, "
                f"{len(graph.edge_types)} edge types; probes measured on {device.type}", len(fit.points)),
            row(name, "fit base (B)", round(fit.base)),
            row(name, "fit error on the probes", round(fit.max_error(), 4))]

    def step(batch) -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch)[0].backward()

    counts = {k: n for k, n in loader.train_counts.items() if n}
    gen = torch.Generator().manual_seed(1)
    worst, worst_plan = 0.0, 0.0
    for seeds in HGT_EVAL_SEEDS:
        batch = loader.random_batch(allocate_seeds(counts, seeds), gen).to(device)
        measured = memory.measure_step_peak(lambda: step(batch), device)
        predicted = fit.predict(*kg_plan.cost_counts(batch))
        from_seeds = fit.predict(*composition.at(seeds))
        err, plan_err = predicted / measured - 1, from_seeds / measured - 1
        worst, worst_plan = max(worst, abs(err)), max(worst_plan, abs(plan_err))
        rows.append(row(name, f"{seeds} seed edges ({batch.num_nodes} nodes, {batch.num_edges} edges): predicted "
                        f"{predicted / 2**20:.2f} MiB vs measured {measured / 2**20:.2f} MiB (from the seed count "
                        f"alone {from_seeds / 2**20:.2f} MiB, error {plan_err:+.1%}), error", round(err, 4),
                        f"within ±{tol:.0%}", abs(err) <= tol))
    rows.append(row(name, "worst absolute error over batch sizes", round(worst, 4), f"<= {tol:.0%}", worst <= tol))
    rows.append(row(name, "worst absolute error of the prediction from the seed count alone", round(worst_plan, 4)))
    rows += _hgt_no_oom_rows(name, model, loader, loss_fn, step, fit, composition, counts, device)
    return rows


def _hgt_no_oom_rows(name, model, loader, loss_fn, step, fit, composition, counts, device) -> list[dict[str, Any]]:
    """Plan seed edges with kg_plan.plan_hetero_batches for tensor budgets of several sizes, then
    run 20 sampled batches of that many seed edges from the training loader."""
    from pipeline.kg.sampler import allocate_seeds

    static = memory.static_costs(model)
    static_total = sum(v for k, v in static.items() if not k.startswith("of which"))
    target = torch.device(device.type)
    rows = []
    for mb in HGT_BUDGETS_MB:
        total = mb * 2**20
        budget = memory.MemoryBudget(device=str(target), total=total, total_source="emulated", safety_factor=0.9,
                                     fixed=memory.fixed_overhead(target, total), static=static,
                                     activation=fit.pooled())
        try:
            plan = kg_plan.plan_hetero_batches(budget, fit, composition,
                                               lambda n: {str(k): v for k, v in allocate_seeds(counts, n).items()},
                                               HGT_MAX_SEED_EDGES)
        except MemoryError as exc:   # refusing a device too small is the planner's answer, not an OOM
            rows.append(row(name, f"{mb} MiB device, sf 0.9: plan refused ({exc})", 0))
            continue
        limit = budget.total * budget.safety_factor - budget.fixed_total
        loader.max_nodes = plan.seed_edges
        loader.set_epoch(mb)
        peak = 0
        for i, batch in enumerate(loader):
            if i == 20:
                break
            batch = batch.to(device)
            peak = max(peak, memory.measure_step_peak(lambda: step(batch), device))
        used = peak + static_total
        rows.append(row(name, f"{mb} MiB device, sf 0.9: plan {plan.seed_edges} seed edges ({plan.reason}); worst "
                        "of 20 batches uses this share of the budget", round(used / limit, 4), "<= 1 (no OOM)",
                        used <= limit))
    return rows
