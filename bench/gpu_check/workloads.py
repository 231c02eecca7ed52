"""What the checks train: the real sample's window graphs and a synthetic PrimeKG-shaped graph, the
project's models on them, and each model's planner, as one ``Subject`` per model.

Data come from the working tree only (a GPU node has no ../shared): the bundled real sample
(data/sample, CC BY 4.0) through the preprocess code, its train split repeated ``Sizes.tile``
times so the largest plans still find full batches, and ``pipeline.kg.generator`` at
``Sizes.kg_scale``. Models, losses, planners, loaders and the training step are the stages' own.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bench.gpu_check.device import free_cached
from bench.gpu_check.sizes import GiB, Sizes
from pipeline import io
from pipeline.can.data.build import preprocess
from pipeline.can.data.cache import SPLIT_KEYS, GraphSplit
from pipeline.can.data.loader import GraphLoader
from pipeline.config import PROJECT_ROOT, Profile, load_profile
from pipeline.memory import MemoryBudget, PlanRequest, plan_memory
from pipeline.memory.measure import HeteroActivationFit, HeteroProbePoint
from pipeline.train import Trainer

LOG = logging.getLogger("gpu-check")
SAFETY_FACTOR = 0.9
SAMPLE_DATASET = "sample/hcrl_sa"


def can_profile(sizes: Sizes, extra: tuple[str, ...] = ()) -> Profile:
    """The CAN profile whose dims the subjects take, reading the bundled sample."""
    return load_profile(sizes.can_profile, [f"data_root={PROJECT_ROOT / 'data'}", f"data.dataset={SAMPLE_DATASET}",
                                            *sizes.can_overrides, *extra], check_paths=False)


def sample_cache(profile: Profile) -> Path:
    """The sample's graph cache, built by the preprocess code into the profile's data.cache_dir."""
    return Path(preprocess(profile, LOG)["cache_dir"])


def tiled(split: GraphSplit, times: int) -> GraphSplit:
    """The split's graphs repeated ``times`` times, in order (local edge indices stay valid)."""
    if times == 1:
        return split
    t = split.t
    tensors = {k: t[k].repeat(times, *([1] * (t[k].dim() - 1))) for k in SPLIT_KEYS
               if k not in ("edge_index", "node_ptr", "edge_ptr")}
    tensors["edge_index"] = t["edge_index"].repeat(1, times)
    for ptr, counts in (("node_ptr", split.nodes_per_graph()), ("edge_ptr", split.edges_per_graph())):
        tensors[ptr] = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts.repeat(times), 0)])
    return GraphSplit(tensors)


@dataclass
class Planned:
    """A plan of one subject for one device total."""

    budget: MemoryBudget
    units: int
    """Batch budget: nodes per batch (CAN) or seed edges per step (KG)."""
    predict: Callable[[Any], float]
    """Activation bytes the plan's cost model predicts for a batch (from its node and edge counts)."""
    text: str


@dataclass
class Subject:
    """One model under test with what the checks need: its loss, planner and training batches."""

    name: str
    model: torch.nn.Module
    loss_fn: Callable
    plan: Callable[[int, Path], Planned]
    """(device total in bytes, plan file) -> the plan at SAFETY_FACTOR, tensors only."""
    batches: Callable[[int, int], Iterator[Any]]
    """(batch budget, seed) -> full training batches of that budget, epoch after epoch."""
    unit: str
    profile: Profile
    """The profile the model's dims and training settings (AMP) come from."""
    data: Any
    """The GraphSplit or KGGraph it trains on."""

    def __post_init__(self) -> None:
        measure = self.plan
        plans: dict[int, Planned] = {}

        def plan(total: int, path: Path) -> Planned:
            # one plan per device total and run: the checks that size for the same device share it
            if total not in plans:
                plans[total] = measure(total, path)
            return plans[total]

        self.plan = plan

    def first_batch(self, units: int, seed: int = 0) -> Any:
        return next(self.batches(units, seed))

    @contextmanager
    def on(self, device: torch.device) -> Iterator["Subject"]:
        """The model on ``device`` for the block, back on the host after it: on CUDA every byte the
        process holds counts in ``max_memory_allocated``, so only the model under test may be there."""
        self.model.to(device)
        try:
            yield self
        finally:
            self.model.zero_grad(set_to_none=True)
            self.model.to("cpu")
            free_cached(device)


def can_subject(name: str, model: torch.nn.Module, loss_fn: Callable, split: GraphSplit, profile: Profile,
                device: torch.device, indices: torch.Tensor | None = None, teacher: torch.nn.Module | None = None) -> Subject:
    """A CAN model planned by ``pipeline.can.plan`` and fed by ``GraphLoader``, as its stage does."""
    from pipeline.can.plan import plan_graph_batches

    def plan(total: int, path: Path) -> Planned:
        budget, p = plan_graph_batches(model, split, loss_fn, device, SAFETY_FACTOR, 10**6, path, "gpu-check",
                                       teacher=teacher, target_gb=total / GiB, amp=True, count_process=False,
                                       log=lambda m: None)
        return Planned(budget, p.max_nodes, lambda b: budget.activation.predict(b.num_nodes, b.num_edges),
                       f"{p.max_nodes} nodes ({p.graphs} graphs) per batch")

    def batches(units: int, seed: int) -> Iterator[Any]:
        loader = GraphLoader(split, 10**6, shuffle=True, seed=seed, indices=indices, max_nodes=units)
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            index = loader.batches()
            for i in index[:-1] if len(index) > 1 else index:   # an epoch's last batch is a remainder
                yield split.collate(i)
            epoch += 1

    return Subject(name, model, loss_fn, plan, batches, "nodes", profile, split)


def kg_subject(name: str, model: torch.nn.Module, loss_fn: Callable, graph: Any, profile: Profile,
               device: torch.device, max_seed_edges: int) -> Subject:
    """A KG model planned by ``pipeline.kg.plan`` (per node and edge type) and fed by ``LinkBatchLoader``."""
    from pipeline.kg.plan import LinkBatchWorkload, cost_counts
    from pipeline.kg.sampler import LinkBatchLoader

    fanouts = profile.kg.fanouts[:model.num_layers]

    def loader(units: int, seed: int) -> LinkBatchLoader:
        return LinkBatchLoader(graph, units, fanouts, profile.kg.neg_ratio, seed, None, profile.kg.sampler)

    def plan(total: int, path: Path) -> Planned:
        workload = LinkBatchWorkload(model, loader(max_seed_edges, 0), loss_fn, device, max_seed_edges, None, True)
        request = PlanRequest(device, SAFETY_FACTOR, path, "gpu-check", total / GiB, count_process=False,
                              log=lambda m: None)
        budget, p = plan_memory(workload, request)
        fit = hetero_fit(path)
        return Planned(budget, p.seed_edges, lambda b: fit.predict(*cost_counts(b)),
                       f"{p.seed_edges} seed edges per step ({p.reason})")

    def batches(units: int, seed: int) -> Iterator[Any]:
        batch_loader, epoch = loader(units, seed), 0
        while True:
            batch_loader.set_epoch(epoch)
            yield from batch_loader
            epoch += 1

    return Subject(name, model, loss_fn, plan, batches, "seed edges", profile, graph)


def hetero_fit(plan_file: Path) -> HeteroActivationFit:
    """The per-type cost fit the KG planner saved beside its plan."""
    fit = dict(io.read_json(plan_file)["fit"])
    fit["points"] = [HeteroProbePoint(**p) for p in fit["points"]]
    return HeteroActivationFit(**fit)


@dataclass
class CanData:
    subjects: list[Subject]
    """The GAT teacher and the VGAE."""
    split: GraphSplit
    """The sample's train split, tiled."""
    manifest: dict[str, Any]
    profile: Profile


def can_subjects(sizes: Sizes, device: torch.device, work: Path) -> CanData:
    """The GAT teacher and the VGAE on the (tiled) sample, with the profile and split they use."""
    from pipeline.can.classifier import build_model, cross_entropy_loss
    from pipeline.can.detector import build_vgae, normal_indices, vgae_loss

    profile = can_profile(sizes, (f"data.cache_dir={work / 'can-cache'}",))
    cache = sample_cache(profile)
    manifest = io.read_json(cache / io.MANIFEST)
    split = tiled(GraphSplit.open(cache / manifest["splits"]["train"]["file"]), sizes.tile)
    torch.manual_seed(0)
    gat = can_subject("GAT teacher", build_model(profile, manifest, split), cross_entropy_loss(None), split, profile,
                      device)
    vgae = can_subject("VGAE", build_vgae(profile.vgae, manifest, split), vgae_loss, split, profile, device,
                       indices=normal_indices(split))
    return CanData([gat, vgae], split, manifest, profile)


def kg_graph(sizes: Sizes, work: Path) -> Any:
    """The synthetic PrimeKG-shaped graph at ``sizes.kg_scale``, cached by the KG cache code."""
    from pipeline.kg.cache import CacheParams, KGGraph, build_cache, cache_key
    from pipeline.kg.generator import generate_primekg_like

    params = CacheParams()
    source = {"generator": "primekg-like", "scale": sizes.kg_scale, "seed": 0}
    key = cache_key(source, params.as_dict())
    path = work / f"kg-{key}"
    build_cache(generate_primekg_like(sizes.kg_scale, seed=0), params, path, key, source)
    return KGGraph.open(path)


def hgt_subject(sizes: Sizes, device: torch.device, work: Path) -> Subject:
    """The HGT teacher of the primekg profile on the synthetic graph."""
    from pipeline.kg.training import build_encoder, teacher_loss

    profile = load_profile("primekg", list(sizes.kg_overrides), check_paths=False)
    graph = kg_graph(sizes, work)
    torch.manual_seed(0)
    model = build_encoder(profile.kg_model.teacher, graph)
    return kg_subject("HGT teacher", model, teacher_loss(profile), graph, profile, device, sizes.kg_max_seed_edges)


def trainer(model: torch.nn.Module, loss_fn: Callable, profile: Profile, folder: Path, device: torch.device,
            threads: int | None, loader: Any = ()) -> Trainer:
    """The training loop the stages use (AMP on CUDA as the profile has it), for its steps only."""
    cfg = profile.train.model_copy(update={"threads": threads} if threads else {})
    return Trainer(model, loss_fn, loader, [], lambda m, val: {}, cfg, folder, LOG, device=device, progress=False)


def train_step(t: Trainer, batch: Any) -> None:
    """One optimizer step exactly as ``Trainer.train_epoch`` takes it (batch copied inside)."""
    t.train_step(batch)
    t.optimizer_step()
