"""Student stage for task: kg: a small encoder (``kg_model.student``, GraphSAGE by default) distilled
from the frozen teacher on each sampled batch (see ``pipeline.kg.training`` and ``pipeline.kg.loss``)."""
from __future__ import annotations

from typing import Any

from pipeline.kg.training import encoder_for_profile, fit_encoder, open_graph, student_loss
from pipeline.train import configure_threads, count_parameters, load_model, seed_everything


def run(ctx) -> dict[str, Any]:
    configure_threads(ctx.profile.train.threads)
    graph = open_graph(ctx)
    device = ctx.device
    # on the training device: it runs on every batch; on the host its parameters are part of the
    # process's resident baseline that the memory plan measures
    teacher = load_model(ctx.upstream["teacher"]["best_checkpoint"], device="cpu").to(device).eval()
    seed_everything(ctx.profile.train.seed)
    model, targets = encoder_for_profile(ctx.profile, ctx.profile.kg_model.student, graph, align_dim=teacher.out_dim)
    distill = ctx.profile.distill
    summary = fit_encoder(ctx, graph, model, student_loss(ctx.profile, teacher), teacher=teacher,
                          label_targets=targets)
    ratio = count_parameters(model) / max(count_parameters(teacher), 1)
    ctx.log.info("student: %d parameters, %.3f of the teacher's %d", count_parameters(model), ratio,
                 count_parameters(teacher))
    return {**summary, "role": "student", "teacher_params": count_parameters(teacher),
            "param_ratio": round(ratio, 4), "distill": {"alpha": distill.alpha, "temperature": distill.temperature}}
