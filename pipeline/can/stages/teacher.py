"""Teacher stage: train the GAT classifier on the cached window graphs, keep the best epoch on val F1.

Attack windows are a minority of the train split, so with ``train.class_weighting`` the
cross-entropy weighs each class by its inverse frequency there; selection is on the F1 of the
attack class, which (unlike accuracy) does not reward predicting "normal" everywhere, with the
validation loss breaking ties once F1 saturates.
"""
from __future__ import annotations

from typing import Any

from pipeline.can.classifier import build_model, class_weights, cross_entropy_loss, validate_classifier
from pipeline.can.data.cache import StageData
from pipeline.can.data.loader import GraphLoader, validation_loader
from pipeline.can.plan import plan_graph_batches, plan_key
from pipeline.train import Selection, Trainer, count_parameters, seed_everything


def run(ctx) -> dict[str, Any]:
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
        memory_plan=budget.planned(plan.predicted_bytes),
    )
    result = trainer.fit()
    return {
        **result.record(),
        "batch_plan": {"graphs": plan.graphs, "max_nodes": plan.max_nodes, "reason": plan.reason},
    }


