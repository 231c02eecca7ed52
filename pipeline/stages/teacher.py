"""Teacher stage: train the GAT classifier on the cached window graphs, keep the best epoch on val F1.

Attack windows are a minority of the train split, so with ``train.class_weighting`` the
cross-entropy weighs each class by its inverse frequency there; selection is on the F1 of the
attack class, which (unlike accuracy) does not reward predicting "normal" everywhere, with the
validation loss breaking ties once F1 saturates.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.data.cache import GraphBatch, GraphSplit, StageData
from pipeline.data.loader import GraphLoader, validation_loader
from pipeline.memory import MiB, plan_graph_batches, plan_key
from pipeline.models.gat import GATWithJK, count_parameters
from pipeline.stages.evaluate import classification_metrics
from pipeline.train import Selection, Trainer, predict, seed_everything


def run(ctx) -> dict[str, Any]:
    if ctx.profile.task == "kg":
        from pipeline.kg.training import run_kg_teacher
        return run_kg_teacher(ctx)
    cfg = ctx.profile.train
    data = StageData.open(ctx)
    manifest, train_split, val_split, device = data.manifest, data.train, data.val, data.device

    seed_everything(cfg.seed)
    model = build_model(ctx.profile, manifest, train_split)
    weights = class_weights(train_split.y) if cfg.class_weighting else None
    ctx.log.info("teacher: %d train / %d val graphs, %d parameters, class weights %s on %s",
                 len(train_split), len(val_split), count_parameters(model),
                 None if weights is None else [round(w, 3) for w in weights.tolist()], device)

    loss_fn = cross_entropy_loss(weights.to(device) if weights is not None else None)
    model.to(device)
    budget, plan = plan_graph_batches(
        model, train_split, loss_fn, device, ctx.profile.safety_factor, cfg.batch_size,
        ctx.dir / "memory_plan.json", plan_key(model, train_split, device, ctx.profile.safety_factor, cfg.batch_size),
        amp=cfg.amp, log=ctx.log.info)
    trainer = Trainer(
        model,
        loss_fn,
        GraphLoader(train_split, cfg.batch_size, shuffle=True, seed=cfg.seed, max_nodes=plan.max_nodes),
        validation_loader(val_split, cfg.batch_size, plan.max_nodes),
        validate_classifier,
        cfg, ctx.dir, ctx.log,
        device=device,
        selection=Selection("f1", "max", tie_metric="loss", tie_mode="min"),
        resume_key=ctx.fingerprint,
        memory_plan={"planned_mb": round(plan.predicted_bytes / MiB, 1), "device_total_mb": round(budget.total / MiB, 1)},
    )
    result = trainer.fit()
    return {
        "best_checkpoint": str(result.best_path),
        "best_epoch": result.best_epoch,
        "best_val": result.best_metrics,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "params": count_parameters(model),
        "batch_plan": {"graphs": plan.graphs, "max_nodes": plan.max_nodes, "reason": plan.reason},
    }


def build_model(profile, manifest: dict[str, Any], split: GraphSplit) -> GATWithJK:
    """The teacher for a cache: vocabulary and feature widths from the data, dims from the profile."""
    return GATWithJK(num_ids=len(manifest["vocab"]) + 1, node_features=split.num_node_features,
                     edge_features=split.num_edge_features, **profile.model.model_dump())


def class_weights(y: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Inverse-frequency weights n / (C * n_c): a balanced split gets all ones."""
    counts = torch.bincount(y.long(), minlength=num_classes).float().clamp_min(1)
    return counts.sum() / (num_classes * counts)


def cross_entropy_loss(weight: torch.Tensor | None):
    """The teacher's loss hook for the Trainer: weighted cross-entropy on graph labels."""
    def loss_fn(model: nn.Module, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch)
        return nn.functional.cross_entropy(logits.float(), batch.y, weight=weight), logits
    return loss_fn


def validate_classifier(model: nn.Module, loader) -> dict[str, float]:
    """Validation metrics of a graph classifier, F1 of the attack class among them (the selection key)."""
    logits, y = predict(model, loader)
    metrics = classification_metrics(y, logits.argmax(-1))
    metrics["loss"] = float(nn.functional.cross_entropy(logits, y)) if y.numel() else float("nan")
    return {k: v for k, v in metrics.items() if isinstance(v, float)}
