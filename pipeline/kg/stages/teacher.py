"""Teacher stage for task: kg: an encoder (``kg_model.teacher``, HGT by default) trained on sampled
link batches, the epoch kept on validation AUC (see ``pipeline.kg.training``)."""
from __future__ import annotations

from typing import Any

from pipeline.kg.training import encoder_for_profile, fit_encoder, open_graph, teacher_loss
from pipeline.train import configure_threads, seed_everything


def run(ctx) -> dict[str, Any]:
    configure_threads(ctx.profile.train.threads)
    graph = open_graph(ctx)
    seed_everything(ctx.profile.train.seed)
    model, targets = encoder_for_profile(ctx.profile, ctx.profile.kg_model.teacher, graph)
    return {**fit_encoder(ctx, graph, model, teacher_loss(ctx.profile), label_targets=targets), "role": "teacher"}
