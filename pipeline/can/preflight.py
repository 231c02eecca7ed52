"""Preflight: the memory budget and batch plan of every training stage, for the device the
profile targets, computed on whatever machine runs it (a CPU-only login node is enough).

The graph shapes come from a small slice of the real data (``PREFLIGHT_ROWS`` rows per file),
and the activation cost is measured on the CPU with the live-tensor tracker: tensor bytes are the
same on a GPU, where only the CUDA context and allocator overheads are added. Measured in fp32, the
plan is conservative for AMP runs.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable

import torch

from pipeline import io
from pipeline.can.config import CanProfile
from pipeline.can.data.cache import GraphSplit
from pipeline.can.plan import BatchPlan, plan_graph_batches, plan_key
from pipeline.memory import MemoryBudget

PREFLIGHT_ROWS = 20_000


def _teacher_setup(profile: CanProfile, manifest: dict, split: GraphSplit):
    from pipeline.can.classifier import build_model, class_weights, cross_entropy_loss

    weights = class_weights(split.y) if profile.train.class_weighting else None
    return build_model(profile, manifest, split), cross_entropy_loss(weights)


def _autoencoder_setup(profile: CanProfile, manifest: dict, split: GraphSplit):
    from pipeline.can.detector import build_vgae, vgae_loss

    return build_vgae(profile.vgae, manifest, split), vgae_loss


def _student_setup(profile: CanProfile, manifest: dict, split: GraphSplit):
    """The GAT student with its distillation loss: cached teacher outputs cost only their rows (zeros
    stand in for them); a teacher run in the step adds its forward pass to the measured activations."""
    from pipeline.can.classifier import build_model, class_weights
    from pipeline.can.distill import GAT_TEACHER, LiveTeacher, StandInTeacher
    from pipeline.can.students import build_student, gat_student_loss

    distill = profile.distill
    weights = class_weights(split.y) if profile.train.class_weighting else None
    if distill.use_teacher_cache:
        source = StandInTeacher({"logits": 2}, GAT_TEACHER.levels)
    else:
        source = LiveTeacher(build_model(profile, manifest, split), GAT_TEACHER, torch.device("cpu"), offload=False)
    return build_student(profile, manifest, split), gat_student_loss(source, weights, distill.temperature, distill.alpha)


MODEL_SETUP: dict[str, Callable] = {"teacher": _teacher_setup, "autoencoder": _autoencoder_setup,
                                    "student": _student_setup, "curriculum": _student_setup}
"""Training stage -> (profile, manifest, train split) -> (model, loss_fn) as the stage builds them."""


def plan_report(profile: CanProfile) -> str:
    """What ``make plan`` prints: the plan of every training stage of the profile's chain."""
    return render(profile, preflight(profile))


def preflight(profile: CanProfile, log: logging.Logger | None = None) -> list[tuple[str, MemoryBudget, BatchPlan]]:
    from pipeline.can.data.build import preprocess

    log = log or logging.getLogger("pipeline.can.preflight")
    results = []
    with tempfile.TemporaryDirectory(prefix="preflight-") as tmp:
        sliced = profile.model_copy(update={"data": profile.data.model_copy(
            update={"limit_rows": PREFLIGHT_ROWS, "cache_dir": str(Path(tmp) / "cache")})})
        cache_dir = Path(preprocess(sliced, log)["cache_dir"])
        manifest = io.read_json(cache_dir / "manifest.json")
        split = GraphSplit.open(cache_dir / manifest["splits"]["train"]["file"])
        for stage in profile.stages:
            if stage not in MODEL_SETUP:
                continue
            target_device, target_gb = profile.plan_target(stage)
            torch.manual_seed(profile.train.seed)
            model, loss_fn = MODEL_SETUP[stage](profile, manifest, split)
            cpu = torch.device("cpu")
            key = plan_key(model, split, cpu, profile.safety_factor, profile.train.batch_size, target_gb)
            budget, plan = plan_graph_batches(
                model, split, loss_fn, cpu, profile.safety_factor, profile.train.batch_size,
                Path(tmp) / f"{stage}-plan.json", key, target_gb=target_gb,
                target_device=target_device, amp=False, log=lambda msg: None)
            results.append((stage, budget, plan))
    return results


def render(profile: CanProfile, results: list[tuple[str, MemoryBudget, BatchPlan]]) -> str:
    out = [f"# memory plan for profile {profile.name} (safety_factor {profile.safety_factor})", ""]
    for stage, budget, plan in results:
        res = profile.resources_for(stage)
        out += [f"## {stage}: {res.gpus or 0} GPU x {res.gpu_mem_gb or '-'} GB, {res.mem_gb} GB host memory", "",
                budget.table(), "",
                f"plan: {plan.graphs} graphs / <= {plan.max_nodes} nodes per batch ({plan.reason}), "
                f"predicted activation peak {plan.predicted_bytes / 2**20:,.1f} MiB", ""]
        if plan.graphs < min(8, profile.train.batch_size):
            out.append("warning: fewer than 8 graphs per batch; raise safety_factor, lower model.hidden/heads, "
                       "or request a larger GPU\n")
    return "\n".join(out)
