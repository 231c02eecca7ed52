"""Curriculum stage: the GAT student trained easy-to-hard, difficulty = VGAE reconstruction error.

Every train graph is scored once by the autoencoder (in memory-planned chunks; the scores are
kept beside the graph cache under the VGAE checkpoint's hash, so a resumed job reads them back).
Each epoch then trains on all attacks plus the easiest normals admitted so far (see
``pipeline.can.pacing``). With ``curriculum.distill`` the student also learns from the GAT
teacher exactly as in the student stage (teacher-output cache or offloaded teacher), so the
curriculum student differs from the KD student only by its schedule.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.can.data.cache import StageData
from pipeline.can.pacing import CurriculumLoader, admitted_fraction, difficulty_scores
from pipeline.can.plan import BatchPlan
from pipeline.can.students import check_ratio, fit_gat_student
from pipeline.device import peak_device_mb, reset_peak
from pipeline.train import configure_threads


def run(ctx) -> dict[str, Any]:
    if "autoencoder" not in ctx.upstream:
        raise ValueError("curriculum scores difficulty with the VGAE: put the autoencoder stage before it in "
                         "the profile's `stages`")
    data = StageData.open(ctx)
    profile, cfg = ctx.profile, ctx.profile.train
    configure_threads(cfg.threads)
    reset_peak(data.device)
    vgae_path = Path(ctx.upstream["autoencoder"]["best_checkpoint"])
    scored: dict[str, Any] = {}

    def make_loader(plan: BatchPlan) -> CurriculumLoader:
        # Scoring chunks are sized from the memory budget and capped by the training step's planned peak.
        scores, cache = difficulty_scores(vgae_path, data.train, data.cache_dir, data.device, profile.safety_factor,
                                          plan.predicted_bytes, ctx.log)
        scored.update(path=str(cache.path), computed=cache.computed)
        loader = CurriculumLoader(data.train, scores, profile.curriculum, cfg.epochs, cfg.batch_size, seed=cfg.seed,
                                  max_nodes=plan.max_nodes)
        _log_schedule(ctx, loader, scores)
        return loader

    alpha = profile.distill.alpha if profile.curriculum.distill else 0.0
    teacher_path = Path(ctx.upstream["teacher"]["best_checkpoint"]) if alpha > 0 else None
    result = fit_gat_student(ctx, data, "curriculum", alpha, teacher_path, make_loader, out_dir=ctx.dir)
    teacher_params = int(ctx.upstream["teacher"]["params"])
    check_ratio(ctx, "curriculum student", result["params"], teacher_params)
    peak = peak_device_mb(data.device)  # of the whole stage; None on the CPU, where the runner records peak RSS
    return {
        **{k: v for k, v in result.items() if k != "teacher"},
        **result["teacher"],
        "teacher_params": teacher_params,
        "param_ratio": round(result["params"] / teacher_params, 4),
        "difficulty_scores": scored.get("path"),
        "difficulty_computed": scored.get("computed"),
        "curriculum": profile.curriculum.model_dump(),
        **({"peak_device_mb": peak} if peak is not None else {}),
    }


def _log_schedule(ctx, loader: CurriculumLoader, scores: torch.Tensor) -> None:
    epochs = ctx.profile.train.epochs
    shares = [round(admitted_fraction(e, epochs, ctx.profile.curriculum), 3) for e in range(1, epochs + 1)]
    normal = scores[loader.normals_by_difficulty]
    ctx.log.info("curriculum: %d attacks always in; %d normal graphs by difficulty (score %.4g .. %.4g); "
                 "share of normals per epoch (%s pacing): %s", loader.attacks.numel(),
                 loader.normals_by_difficulty.numel(), float(normal.min()) if normal.numel() else float("nan"),
                 float(normal.max()) if normal.numel() else float("nan"), ctx.profile.curriculum.pacing, shares)
