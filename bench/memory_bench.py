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
from pipeline.data.cache import GraphSplit
from pipeline.data.loader import GraphLoader

EVAL_GRAPHS = (96, 128, 192, 256, 384, 512)
BUDGETS_MB = (64, 128, 256, 512)
TOLERANCE = {"cpu": 0.20, "cuda": 0.15}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def accuracy_rows(name: str, model: torch.nn.Module, split: GraphSplit,
                  loss_fn: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, Any]]) -> list[dict[str, Any]]:
    device = _device()
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
        batch = split.collate(torch.randperm(len(split), generator=gen)[:graphs]).to(device)
        measured = memory.measure_step_peak(lambda: step(batch), device)
        predicted = fit.predict(batch.num_nodes, batch.num_edges)
        err = predicted / measured - 1
        worst = max(worst, abs(err))
        rows.append(row(name, f"{graphs} graphs ({batch.num_nodes} nodes, {batch.num_edges} edges): "
                        f"predicted {predicted / 2**20:.2f} MiB vs measured {measured / 2**20:.2f} MiB, error",
                        round(err, 4), f"within ±{tol:.0%}", abs(err) <= tol))
    rows.append(row(name, "worst absolute error over batch sizes", round(worst, 4), f"<= {tol:.0%}", worst <= tol))
    rows += no_oom_rows(name, model, split, loss_fn, step, device)
    return rows


def no_oom_rows(name, model, split, loss_fn, step, device) -> list[dict[str, Any]]:
    """For several device sizes: plan at safety_factor 0.9, then run real batches from the loader."""
    rows = []
    static = sum(v for k, v in memory.static_costs(model).items() if not k.startswith("of which"))
    for mb in BUDGETS_MB:
        target_gb = mb / 1024
        budget, plan = _plan(model, split, loss_fn, device, target_gb)
        limit = budget.total * budget.safety_factor - budget.fixed_total
        loader = GraphLoader(split, 10**6, shuffle=True, seed=mb, max_nodes=plan.max_nodes)
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
        key = memory.plan_key(model, split, device, 0.9, 10**6, target_gb)
        return memory.plan_graph_batches(model, split, loss_fn, device, 0.9, 10**6, Path(tmp) / "p.json", key,
                                         target_gb=target_gb, count_process=False, log=lambda m: None)


def gat_memory_accuracy() -> list[dict[str, Any]]:
    """The GAT teacher (set_01 profile dims) on set_01 window graphs."""
    from pipeline.config import load_profile
    from pipeline.stages.teacher import build_model, cross_entropy_loss

    cache_dir = ensure_cache()
    manifest = io.read_json(cache_dir / "manifest.json")
    split = GraphSplit.open(cache_dir / manifest["splits"]["train"]["file"])
    profile = load_profile("set_01", check_paths=False)
    torch.manual_seed(0)
    model = build_model(profile, manifest, split)
    return accuracy_rows("gat_memory_accuracy", model, split, cross_entropy_loss(None))
