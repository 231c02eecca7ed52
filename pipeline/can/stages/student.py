"""Student stage: small models distilled from the teachers, and the same student without KD.

Trained one after another, each in its own folder with its own checkpoints (so a job killed
midway resumes the model it was training and skips the finished ones):

    student/kd/        GAT student (profile ``student_model``) distilled from the GAT teacher:
                       alpha * KL(teacher || student at temperature T) * T^2 + (1 - alpha) * CE
    student/no_kd/     the same student, same seed and schedule, hard labels only (alpha 0), so
                       the gain of distillation is measured rather than claimed
    student/vgae/      small VGAE (profile ``vgae_student``) matching the autoencoder's node
                       latents (through a projection) and feature reconstructions

Teacher outputs come from the teacher-output cache or from the teacher run in the step,
offloaded to the CPU between steps (``distill``; see ``pipeline.can.distill``). The done record and
every line of metrics.jsonl say which was used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.can.data.cache import StageData
from pipeline.can.students import (
    build_student,
    check_ratio,
    fit_gat_student,
    fit_vgae_student,
    plain_loader,
)
from pipeline.device import peak_device_mb, reset_peak
from pipeline.train import configure_threads, count_parameters


def run(ctx) -> dict[str, Any]:
    data = StageData.open(ctx)
    distill = ctx.profile.distill
    configure_threads(ctx.profile.train.threads)
    reset_peak(data.device)
    teacher_path = Path(ctx.upstream["teacher"]["best_checkpoint"])
    teacher_params = int(ctx.upstream["teacher"]["params"])
    check_ratio(ctx, "GAT student", count_parameters(build_student(ctx.profile, data.manifest, data.train)),
                teacher_params)

    kd = fit_gat_student(ctx, data, "kd", distill.alpha, teacher_path, plain_loader(ctx, data))
    summary: dict[str, Any] = {
        "best_checkpoint": kd["best_checkpoint"],
        "best_epoch": kd["best_epoch"],
        "best_val": kd["best_val"],
        "params": kd["params"],
        "teacher_params": teacher_params,
        "param_ratio": round(kd["params"] / teacher_params, 4),
        "classifiers": {"student": kd["best_checkpoint"]},
        "models": {"kd": kd},
        "distill": distill.model_dump(),
        **kd["teacher"],
    }
    if distill.train_baseline:
        base = fit_gat_student(ctx, data, "no_kd", 0.0, None, plain_loader(ctx, data))
        summary["classifiers"]["student_no_kd"] = base["best_checkpoint"]
        summary["models"]["no_kd"] = base
    if distill.vgae_student and "autoencoder" in ctx.upstream:
        vgae = fit_vgae_student(ctx, data)
        summary["anomaly_detectors"] = {"vgae_student": vgae["detector"]}
        summary["models"]["vgae"] = vgae
    peak = peak_device_mb(data.device)  # of the whole stage; None on the CPU, where the runner records peak RSS
    if peak is not None:
        summary["peak_device_mb"] = peak
    return summary


# -- shared set-up -------------------------------------------------------------------------------


# -- teacher outputs -----------------------------------------------------------------------------


# -- GAT students --------------------------------------------------------------------------------


# -- VGAE student --------------------------------------------------------------------------------


