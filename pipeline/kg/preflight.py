"""make plan for task: kg: the memory budget and seed edges per step of the teacher and student
stages, for the device the profile targets, computed on whatever machine runs it.

Unlike the CAN windows, a knowledge-graph model grows with its graph (an embedding row per node),
and a batch's neighbourhood with the graph's degrees: so the plan is made on the graph the chain
will train on. It builds (or finds) the cache the preprocess stage uses, keyed by content, so the
stage is then a no-op. The activation costs are measured on the CPU with the live-tensor tracker
(tensor bytes are the same on a GPU, where only the CUDA context and allocator overheads are
added), in fp32, like the CAN preflight.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.kg.build import kg_preprocess
from pipeline.kg.cache import KGGraph
from pipeline.kg.config import KGProfile
from pipeline.kg.loss import with_label_term
from pipeline.kg.plan import HeteroBatchPlan, describe_plan, kg_plan_key, plan_kg_batches
from pipeline.kg.training import encoder_for_profile, student_loss, teacher_loss, train_loader
from pipeline.memory import MemoryBudget

TRAINING_STAGES = ("teacher", "student")


@dataclass
class KGStagePlan:
    stage: str
    budget: MemoryBudget
    plan: HeteroBatchPlan
    params: int


def kg_preflight(profile: KGProfile, log: logging.Logger | None = None) -> tuple[KGGraph, list[KGStagePlan]]:
    """The graph the chain trains on, and the plan of each of its training stages."""
    log = log or logging.getLogger("pipeline.can.preflight")
    graph = KGGraph.open(kg_preprocess(profile, log)["cache_dir"])
    kg, cpu = profile.kg, torch.device("cpu")
    plans = []
    with tempfile.TemporaryDirectory(prefix="preflight-") as tmp:
        for stage in (s for s in profile.stages if s in TRAINING_STAGES):
            target_device, target_gb = profile.plan_target(stage)
            torch.manual_seed(profile.train.seed)
            teacher = None
            if stage == "teacher":
                model, targets = encoder_for_profile(profile, profile.kg_model.teacher, graph)
                loss_fn = teacher_loss(profile)
            else:
                # an untrained teacher of the trained one's shape: its size and forward pass are what count
                teacher = encoder_for_profile(profile, profile.kg_model.teacher, graph)[0].eval()
                model, targets = encoder_for_profile(profile, profile.kg_model.student, graph,
                                                     align_dim=teacher.out_dim)
                loss_fn = student_loss(profile, teacher)
            if targets:
                loss_fn = with_label_term(loss_fn, targets, kg.label_weight)
            loader = train_loader(profile, graph, model)
            key = kg_plan_key(model, graph, loader, cpu, profile.safety_factor, kg.max_seed_edges, target_gb)
            budget, plan = plan_kg_batches(model, loader, loss_fn, cpu, profile.safety_factor, kg.max_seed_edges,
                                           Path(tmp) / f"{stage}-plan.json", key, teacher=teacher,
                                           target_gb=target_gb, target_device=target_device,
                                           log=lambda msg: None)
            plans.append(KGStagePlan(stage, budget, plan, sum(p.numel() for p in model.parameters())))
    return graph, plans


def render_kg(profile: KGProfile, graph: KGGraph, plans: list[KGStagePlan]) -> str:
    """The plan as the CAN one reads: a section per stage with its budget table and its batch."""
    nodes = ", ".join(f"{graph.type_name(t)} {n:,}" for t, n in sorted(graph.num_nodes.items()))
    out = [f"# memory plan for profile {profile.name} (safety_factor {profile.safety_factor})", "",
           f"graph: {graph.path} ({sum(graph.num_nodes.values()):,} nodes: {nodes}; "
           f"{len(graph.edge_types)} edge types)", ""]
    for item in plans:
        res = profile.resources_for(item.stage)
        out += [f"## {item.stage}: {res.gpus or 0} GPU x {res.gpu_mem_gb or '-'} GB, {res.mem_gb} GB host memory",
                "", f"model: {item.params:,} parameters", "", item.budget.table(), "",
                describe_plan(graph, item.plan), ""]
        if item.plan.seed_edges < min(64, profile.kg.max_seed_edges):
            out.append("warning: fewer than 64 seed edges per step; raise safety_factor, lower kg_model dims or "
                       "kg.fanouts, or request a larger GPU\n")
    return "\n".join(out)


def plan_report(profile: KGProfile) -> str:
    """What ``make plan`` prints: the plan of the teacher and student stages of the profile's chain."""
    return render_kg(profile, *kg_preflight(profile))
