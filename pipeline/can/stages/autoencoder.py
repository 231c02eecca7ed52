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

from typing import Any

from pipeline.can.data.cache import StageData
from pipeline.can.data.loader import GraphLoader, validation_loader
from pipeline.can.detector import (
    build_vgae,
    detector_selection,
    finish_detector,
    normal_indices,
    validate_autoencoder,
    vgae_loss,
)
from pipeline.can.plan import plan_graph_batches, plan_key
from pipeline.train import Trainer, count_parameters, seed_everything


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
        memory_plan=budget.planned(plan.predicted_bytes),
    )
    result = trainer.fit()
    detector = finish_detector(result.best_path, trainer.val_loader, device, ctx.dir)
    ctx.log.info("autoencoder: best epoch %d, val AUROC %.4f, threshold %.5g (%s, val F1 %.4f)", result.best_epoch,
                 result.best_metrics.get("auroc", float("nan")), detector["threshold"], detector["method"],
                 detector["val_f1"])
    return {
        **result.record(),
        "latent_dim": model.latent_dim,
        "anomaly_detectors": {"vgae": detector},
        "batch_plan": {"graphs": plan.graphs, "max_nodes": plan.max_nodes, "reason": plan.reason},
    }


