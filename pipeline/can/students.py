"""Fitting the students: the GAT student with or without distillation, and the VGAE student, each with its teacher's outputs cached or computed live."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pipeline.can.classifier import class_weights, validate_classifier
from pipeline.can.data.cache import GraphBatch, GraphSplit, StageData
from pipeline.can.data.loader import GraphLoader, validation_loader
from pipeline.can.detector import build_vgae, detector_selection, finish_detector, normal_indices, validate_autoencoder
from pipeline.can.distill import (
    GAT_TEACHER,
    VGAE_TEACHER,
    CachedTeacher,
    LiveTeacher,
    OutputCache,
    StandInTeacher,
    TeacherKind,
    TeacherOutputLoader,
    compute_teacher_outputs,
    kd_loss,
    teacher_report,
    vgae_kd_loss,
)
from pipeline.can.models.gat import GATWithJK
from pipeline.can.plan import BatchPlan, plan_graph_batches, plan_key
from pipeline.train import Selection, Trainer, count_parameters, load_model, seed_everything

CLASSIFIER_SELECTION = Selection("f1", "max", tie_metric="loss", tie_mode="min")


LoaderFactory = Callable[[BatchPlan], Any]
"""The stage's batch plan -> the train loader (a GraphLoader or a CurriculumLoader), before teacher
outputs are attached."""


def plain_loader(ctx, data: StageData, indices: torch.Tensor | None = None) -> LoaderFactory:
    cfg = ctx.profile.train
    return lambda plan: GraphLoader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, indices=indices,
                                    max_nodes=plan.max_nodes)


def build_student(profile, manifest: dict[str, Any], split: GraphSplit) -> GATWithJK:
    """The GAT student: the teacher's architecture with the profile's ``student_model`` dims."""
    return GATWithJK(num_ids=len(manifest["vocab"]) + 1, node_features=split.num_node_features,
                     edge_features=split.num_edge_features, **profile.student_model.model_dump())


def check_ratio(ctx, what: str, params: int, teacher_params: int) -> None:
    ratio = params / max(teacher_params, 1)
    limit = ctx.profile.distill.max_param_ratio
    ctx.log.info("%s: %d parameters, %.3f of the teacher's %d", what, params, ratio, teacher_params)
    if ratio > limit:
        ctx.log.warning("%s has %.3f of its teacher's parameters (> distill.max_param_ratio %.3f); "
                        "shrink student_model / vgae_student", what, ratio, limit)


@dataclass
class TeacherSetup:
    """How a student's loss gets its teacher outputs, and what planning must count."""

    source: Any
    """Callable batch -> outputs (CachedTeacher / LiveTeacher), or None without distillation."""
    planning_source: Any
    resident: nn.Module | None
    """Teacher parameters that stay on the device (counted in the static memory budget)."""
    cache: OutputCache | None = None

    @property
    def mode(self) -> str:
        return getattr(self.source, "mode", "none")


def teacher_setup(ctx, data: StageData, kind: TeacherKind, teacher_path: Path | None,
                  widths: dict[str, int]) -> TeacherSetup:
    if teacher_path is None:
        return TeacherSetup(None, None, None)
    distill = ctx.profile.distill
    if distill.use_teacher_cache:
        cache = OutputCache(data.cache_dir, "teacher_outputs", teacher_path, "train")
        return TeacherSetup(CachedTeacher(), StandInTeacher(widths, kind.levels), None, cache)
    live = LiveTeacher(load_model(teacher_path, "cpu"), kind, data.device, distill.offload_teacher_to_cpu)
    return TeacherSetup(live, live, live.resident())


def attach_teacher_outputs(ctx, data: StageData, kind: TeacherKind, teacher_path: Path, setup: TeacherSetup,
                           loader: Any, cap_bytes: int) -> Any:
    """With the cache: fill it if needed (chunks no larger than a training step), wrap the loader."""
    if setup.cache is None:
        return loader
    sf = ctx.profile.safety_factor

    def compute() -> dict[str, torch.Tensor]:
        teacher = load_model(teacher_path, data.device)
        outputs = compute_teacher_outputs(teacher, kind, data.train, data.device, sf, cap_bytes, ctx.log)
        del teacher
        return outputs

    outputs = setup.cache.get_or_compute(compute, ctx.log)
    return TeacherOutputLoader(loader, outputs, kind.levels)


def gat_student_loss(source: Any, weight: torch.Tensor | None, temperature: float, alpha: float):
    """Loss hook: KD against the teacher's logits (from ``source``) mixed with weighted CE."""
    def loss_fn(model: nn.Module, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch)
        teacher = source(batch)["logits"] if source is not None and alpha > 0 else None
        return kd_loss(logits, teacher, batch.y, temperature=temperature, alpha=alpha, weight=weight), logits
    return loss_fn


def fit_gat_student(ctx, data: StageData, name: str, alpha: float, teacher_path: Path | None,
                    make_loader: LoaderFactory, out_dir: Path | None = None) -> dict[str, Any]:
    """Train one GAT student in ``out_dir`` (default ``<stage>/<name>``); returns its summary."""
    cfg, distill = ctx.profile.train, ctx.profile.distill
    out_dir = out_dir or ctx.dir / name
    device = data.device
    seed_everything(cfg.seed)
    model = build_student(ctx.profile, data.manifest, data.train).to(device)
    weights = class_weights(data.train.y).to(device) if cfg.class_weighting else None
    setup = teacher_setup(ctx, data, GAT_TEACHER, teacher_path if alpha > 0 else None, {"logits": 2})
    plan_loss = gat_student_loss(setup.planning_source, weights, distill.temperature, alpha)
    budget, plan = plan_graph_batches(
        model, data.train, plan_loss, device, ctx.profile.safety_factor, cfg.batch_size, out_dir / "memory_plan.json",
        plan_key(model, data.train, device, ctx.profile.safety_factor, cfg.batch_size) + f"-{setup.mode}",
        teacher=setup.resident, amp=cfg.amp, log=ctx.log.info)
    loader = make_loader(plan)
    if setup.source is not None:
        loader = attach_teacher_outputs(ctx, data, GAT_TEACHER, teacher_path, setup, loader, plan.predicted_bytes)
    report = teacher_report(setup.source, setup.cache) if setup.source is not None else {"teacher_mode": "none"}
    ctx.log.info("%s: alpha %.2f, T %.1f, %d parameters, teacher %s", name, alpha, distill.temperature,
                 count_parameters(model), setup.mode)
    trainer = Trainer(
        model, gat_student_loss(setup.source, weights, distill.temperature, alpha), loader,
        validation_loader(data.val, cfg.batch_size, plan.max_nodes), validate_classifier, cfg, out_dir, ctx.log,
        device=device, selection=CLASSIFIER_SELECTION, resume_key=f"{ctx.fingerprint}:{name}",
        memory_plan={**budget.planned(plan.predicted_bytes), **_metric_flags(report)},
    )
    result = trainer.fit()
    return {
        **result.record(), "alpha": alpha, "teacher": report,
        "batch_plan": {"graphs": plan.graphs, "max_nodes": plan.max_nodes, "reason": plan.reason},
    }


def _metric_flags(report: dict[str, Any]) -> dict[str, Any]:
    """The teacher flags that go on every metrics.jsonl line."""
    return {k: report[k] for k in ("teacher_mode", "teacher_cache", "teacher_offload") if k in report}


def vgae_student_loss(source: Any, alpha: float):
    def loss_fn(model: nn.Module, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        teacher = source(batch) if source is not None and alpha > 0 else {}
        return vgae_kd_loss(model, batch, teacher, alpha if teacher else 0.0)
    return loss_fn


def fit_vgae_student(ctx, data: StageData) -> dict[str, Any]:
    """Distil the small VGAE from the autoencoder on attack-free train graphs; threshold it on val."""
    cfg, distill = ctx.profile.train, ctx.profile.distill
    out_dir = ctx.dir / "vgae"
    device = data.device
    teacher_path = Path(ctx.upstream["autoencoder"]["best_checkpoint"])
    teacher_latent = int(ctx.upstream["autoencoder"]["latent_dim"])
    teacher_params = int(ctx.upstream["autoencoder"]["params"])
    alpha = distill.alpha
    seed_everything(cfg.seed)
    model = build_vgae(ctx.profile.vgae_student, data.manifest, data.train,
                       project_to=teacher_latent if alpha > 0 else None).to(device)
    check_ratio(ctx, "VGAE student", count_parameters(model), teacher_params)
    widths = {"mu": teacher_latent, "x_hat": data.train.num_node_features}
    setup = teacher_setup(ctx, data, VGAE_TEACHER, teacher_path if alpha > 0 else None, widths)
    budget, plan = plan_graph_batches(
        model, data.train, vgae_student_loss(setup.planning_source, alpha), device, ctx.profile.safety_factor,
        cfg.batch_size, out_dir / "memory_plan.json",
        plan_key(model, data.train, device, ctx.profile.safety_factor, cfg.batch_size) + f"-{setup.mode}",
        teacher=setup.resident, amp=cfg.amp, log=ctx.log.info)
    loader = plain_loader(ctx, data, normal_indices(data.train))(plan)
    if setup.source is not None:
        loader = attach_teacher_outputs(ctx, data, VGAE_TEACHER, teacher_path, setup, loader, plan.predicted_bytes)
    report = teacher_report(setup.source, setup.cache) if setup.source is not None else {"teacher_mode": "none"}
    trainer = Trainer(
        model, vgae_student_loss(setup.source, alpha), loader, validation_loader(data.val, cfg.batch_size, plan.max_nodes),
        validate_autoencoder, cfg, out_dir, ctx.log, device=device, selection=detector_selection(data.val),
        resume_key=f"{ctx.fingerprint}:vgae",
        memory_plan={**budget.planned(plan.predicted_bytes), **_metric_flags(report)},
    )
    result = trainer.fit()
    detector = finish_detector(result.best_path, trainer.val_loader, device, out_dir)
    return {
        **result.record(), "teacher_params": teacher_params, "param_ratio": round(result.params / teacher_params, 4), "alpha": alpha, "teacher": report,
        "detector": detector,
    }
