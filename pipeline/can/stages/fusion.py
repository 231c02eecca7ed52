"""Fusion stage: one calibrated detector stacked on the teacher's, autoencoder's and students' scores.

It scores the validation split with every model the teacher, autoencoder and student stages of
the chain trained, fits the stacking on those validation windows only (``pipeline.can.fusion``:
logistic regression on the standardised logit/log scores, C chosen by cross-validation on
validation, optionally an isotonic calibration) and picks the threshold on validation with the
VGAE's rule (best F1). It never opens a test scenario: evaluate applies the saved model and
threshold to every split. ``fusion/model.json`` is the model as plain numbers;
``fusion/choices.json`` records every choice with the validation number that made it.

A validation split with fewer than two windows of a class cannot fit it: the stage then records
the reason in ``choices.json``, its done record and a warning naming ``data.val_fraction`` (shown
by ``make status``), and evaluate has no fusion row, as the VGAE falls back rather than fails
when validation has no attacks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.can.data.cache import open_split
from pipeline.can.data.loader import validation_loader
from pipeline.can.fusion import (
    CHOICES_FILE,
    MODEL_FILE,
    cannot_fit,
    fit_fusion,
    fusion_inputs,
    score_inputs,
)
from pipeline.can.inference import inference_node_cap
from pipeline.errors import InputError
from pipeline.stage_warnings import clear_warnings, record_warning


def run(ctx) -> dict[str, Any]:
    clear_warnings(ctx.dir)
    cache_dir = Path(ctx.upstream["preprocess"]["cache_dir"])
    val = open_split(cache_dir, io.read_json(cache_dir / io.MANIFEST), "val")
    inputs = fusion_inputs(ctx.upstream)
    if not inputs:
        raise InputError(f"profile {ctx.profile.name}: stage fusion has no model to stack; add teacher, "
                         f"autoencoder or student before it in `stages` (now {ctx.profile.stages})")
    loader = validation_loader(val, ctx.profile.train.batch_size, inference_node_cap(ctx.upstream))
    columns, y = score_inputs(inputs, loader, ctx.device)
    names = [item.name for item in inputs]
    reason = cannot_fit(y)
    if reason:
        message = f"fusion not fitted: {reason}; change data.val_fraction so validation holds both classes"
        record_warning(ctx.dir, "fusion_not_fitted", message, "data.val_fraction")
        ctx.log.warning(message)
        io.write_json(ctx.dir / CHOICES_FILE, {"fitted_on": "val", "skipped": reason, "inputs": names})
        return {"skipped": reason, "inputs": names}
    model, choices = fit_fusion(columns, {item.name: item.kind for item in inputs}, y, ctx.profile.fusion)
    model.save(ctx.dir / MODEL_FILE)
    io.write_json(ctx.dir / CHOICES_FILE, choices)
    ctx.log.info("fusion of %s on %d val windows: C %g (cv log loss %.4f), coefficients %s, threshold %.4g "
                 "(val F1 %.4f), val AUROC %.4f", names, y.size, choices["C"]["chosen"],
                 choices["C"]["cv_log_loss"][str(choices["C"]["chosen"])],
                 {k: round(v, 4) for k, v in choices["coefficients"].items()}, model.threshold,
                 choices["threshold"]["val_f1"], choices["val"]["auroc"])
    return {"model": str(ctx.dir / MODEL_FILE), "choices": str(ctx.dir / CHOICES_FILE), "inputs": names,
            "method": model.method, "threshold": model.threshold, "val": choices["val"]}
