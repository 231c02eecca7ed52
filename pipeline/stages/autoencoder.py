"""Autoencoder stage: train the VGAE teacher on attack-free windows; its reconstruction error
is an anomaly score, thresholded on validation.

Only normal graphs of the train split are trained on (the model must learn what normal looks
like, not reconstruct attacks well). The validation split holds attacks, so epochs are selected
on its AUROC, compared to 3 decimals (smaller differences are noise on a validation split of this
size), with the mean error of its normal graphs breaking ties (or deciding alone when validation
has no attacks). The decision threshold is the one with the best F1 on validation, or the 99th
percentile of normal validation scores when validation has no attacks; it is saved in
``threshold.json`` and in the done record, and evaluate applies it to every test scenario.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn

from pipeline import io
from pipeline.config import VGAEConfig
from pipeline.data.cache import GraphBatch, GraphSplit, StageData
from pipeline.data.loader import GraphLoader, validation_loader
from pipeline.memory import MiB, plan_graph_batches, plan_key
from pipeline.models.gat import count_parameters
from pipeline.models.vgae import VGAE
from pipeline.stages.evaluate import anomaly_scores, auroc
from pipeline.train import Selection, Trainer, load_model, seed_everything

NORMAL_QUANTILE = 0.99
"""Threshold quantile of normal validation scores when validation has no attacks."""


def run(ctx) -> dict[str, Any]:
    cfg = ctx.profile.train
    data = StageData.open(ctx)
    manifest, train_split, val_split, device = data.manifest, data.train, data.val, data.device

    seed_everything(cfg.seed)
    model = build_vgae(ctx.profile.vgae, manifest, train_split)
    normal = normal_indices(train_split)
    ctx.log.info("autoencoder: %d attack-free of %d train graphs, %d val graphs, %d parameters on %s",
                 normal.numel(), len(train_split), len(val_split), count_parameters(model), device)
    model.to(device)
    budget, plan = plan_graph_batches(
        model, train_split, vgae_loss, device, ctx.profile.safety_factor, cfg.batch_size,
        ctx.dir / "memory_plan.json", plan_key(model, train_split, device, ctx.profile.safety_factor, cfg.batch_size),
        amp=cfg.amp, log=ctx.log.info)
    trainer = Trainer(
        model, vgae_loss,
        GraphLoader(train_split, cfg.batch_size, shuffle=True, seed=cfg.seed, indices=normal, max_nodes=plan.max_nodes),
        validation_loader(val_split, cfg.batch_size, plan.max_nodes),
        validate_autoencoder, cfg, ctx.dir, ctx.log,
        device=device, selection=detector_selection(val_split), resume_key=ctx.fingerprint,
        memory_plan={"planned_mb": round(plan.predicted_bytes / MiB, 1), "device_total_mb": round(budget.total / MiB, 1)},
    )
    result = trainer.fit()
    detector = finish_detector(result.best_path, trainer.val_loader, device, ctx.dir)
    ctx.log.info("autoencoder: best epoch %d, val AUROC %.4f, threshold %.5g (%s, val F1 %.4f)", result.best_epoch,
                 result.best_metrics.get("auroc", float("nan")), detector["threshold"], detector["method"],
                 detector["val_f1"])
    return {
        "best_checkpoint": str(result.best_path),
        "best_epoch": result.best_epoch,
        "best_val": result.best_metrics,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "params": count_parameters(model),
        "latent_dim": model.latent_dim,
        "anomaly_detectors": {"vgae": detector},
        "batch_plan": {"graphs": plan.graphs, "max_nodes": plan.max_nodes, "reason": plan.reason},
    }


def build_vgae(cfg: VGAEConfig, manifest: dict[str, Any], split: GraphSplit, project_to: int | None = None) -> VGAE:
    """A VGAE for a cache: vocabulary and feature widths from the data, dims from the profile."""
    return VGAE(num_ids=len(manifest["vocab"]) + 1, node_features=split.num_node_features,
                edge_features=split.num_edge_features, project_to=project_to, **cfg.model_dump())


def normal_indices(split: GraphSplit) -> torch.Tensor:
    """Graphs without any attack message: what the autoencoder learns to reconstruct."""
    return torch.nonzero(split.y == 0).flatten()


def vgae_loss(model: nn.Module, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The autoencoder's loss hook for the Trainer: reconstruction errors + weighted KL.

    The forward goes through ``model`` (in data-parallel training the DDP wrapper, which
    synchronises gradients); the loss helpers are read from the VGAE inside it.
    """
    out = model(batch)
    return getattr(model, "module", model).loss(batch, out)


AUROC_DECIMALS = 3
"""Selection compares validation AUROC to this many decimals; ties go to the lower normal error."""


def detector_selection(val: GraphSplit) -> Selection:
    """AUROC on validation (rounded) when it has both classes, else the normal reconstruction error."""
    labels = set(torch.unique(val.y).tolist())
    if labels == {0, 1}:
        return Selection("auroc_rounded", "max", tie_metric="normal_error", tie_mode="min")
    return Selection("normal_error", "min")


def validate_autoencoder(model: nn.Module, loader) -> dict[str, float]:
    """AUROC of the reconstruction error on validation, and the mean error of its normal graphs."""
    scores, y = anomaly_scores(model, loader)
    normal = scores[y == 0]
    area = auroc(y, scores)
    return {"auroc": area, "auroc_rounded": round(area, AUROC_DECIMALS),
            "normal_error": float(normal.mean()) if normal.numel() else float("nan"),
            "attack_error": float(scores[y == 1].mean()) if bool((y == 1).any()) else float("nan")}


def choose_threshold(y: torch.Tensor, scores: torch.Tensor) -> dict[str, Any]:
    """Score at or above which a graph is called an attack: best F1 on validation (midpoint to
    the next lower score, so small shifts on test data do not flip the boundary graph), or the
    99th percentile of normal scores when validation has no attacks."""
    t, s = y.cpu().numpy(), scores.cpu().double().numpy()
    if t.size and t.min() == 0 and t.max() == 1:
        precision, recall, thresholds = skm.precision_recall_curve(t, s)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = int(np.argmax(f1[:-1]))
        chosen = float(thresholds[best])
        lower = s[s < chosen]
        if lower.size:
            chosen = float((chosen + lower.max()) / 2)
        return {"threshold": chosen, "method": "max F1 on val", "val_f1": float(f1[best])}
    normal = s[t == 0] if t.size else s
    chosen = float(np.quantile(normal, NORMAL_QUANTILE)) if normal.size else float("inf")
    return {"threshold": chosen, "method": f"{NORMAL_QUANTILE:.0%} quantile of normal val scores",
            "val_f1": float("nan")}


def finish_detector(best_path: Path, val_loader: GraphLoader, device: torch.device, out_dir: Path) -> dict[str, Any]:
    """Threshold the best model on validation; write ``threshold.json``; return the detector record.

    ``val_loader`` is the Trainer's: its batches stay under the training plan's node cap, lowered
    with the plan after an out-of-memory back-off."""
    model = load_model(best_path, device)
    scores, y = anomaly_scores(model, val_loader, device)
    chosen = choose_threshold(y, scores)
    record = {"checkpoint": str(best_path), **chosen, "val_auroc": auroc(y, scores)}
    io.write_json(Path(out_dir) / "threshold.json", record)
    return record
