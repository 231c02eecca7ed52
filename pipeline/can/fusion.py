"""Fusion: one calibrated detector stacked on the per-window scores of the upstream models.

Its inputs (``fusion_inputs``) are the models the teacher, autoencoder and student stages of the
chain trained: the GAT teacher's probability of attack, the VGAE's reconstruction error, the
students' probabilities and the small VGAE's error. Each becomes one feature (``feature_matrix``):
a probability as its logit (clipped to [1e-6, 1 - 1e-6]), an error as its log (floored at 1e-12).
Both stretch the scale where the windows are told apart (probabilities near 0 and 1, errors over
orders of magnitude) into a range a linear model can weigh; neither depends on the split scored,
so a window's fused score is the same whichever split it sits in.

``fit_fusion`` reads validation windows only. Features are standardised with validation's mean
and std; a logistic regression (L2) is fitted with the C of ``fusion.c_grid`` whose stratified
cross-validated log loss on validation is lowest (ties to the smaller C). With ``method:
isotonic`` its decision value is then mapped through an isotonic regression fitted to the
out-of-fold decision values of validation (so the calibration is not fitted to in-sample scores).
The threshold is the VGAE's rule, ``pipeline.can.detector.choose_threshold`` (best F1 on
validation). Every choice and the validation number behind it go into ``choices``; the model is
plain data (``FusionModel.save``: JSON of the scaler, coefficients, intercept, isotonic knots and
threshold), no pickle.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from scipy.special import expit
from sklearn import metrics as skm
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from pipeline import io
from pipeline.can.config import FusionConfig
from pipeline.can.detector import choose_threshold
from pipeline.can.metrics import anomaly_scores, probability_of_attack
from pipeline.can.scores import (
    CLASSIFIER,
    DETECTOR,
    detectors_to_score,
    models_to_score,
)
from pipeline.errors import InputError
from pipeline.train import load_model, predict

FUSION_STAGES = ("teacher", "autoencoder", "student")
"""Upstream stages whose models fusion stacks (the curriculum student comes after it)."""
PROBABILITY_CLIP = 1e-6
ERROR_FLOOR = 1e-12
MIN_WINDOWS_PER_CLASS = 2
"""Fewest validation windows of each class that C can be cross-validated on."""
MODEL_FILE, CHOICES_FILE = "model.json", "choices.json"


@dataclass(frozen=True)
class FusionInput:
    name: str
    kind: str
    """``classifier`` (probability of attack) or ``detector`` (reconstruction error)."""
    checkpoint: str


def fusion_inputs(upstream: dict[str, dict[str, Any]]) -> list[FusionInput]:
    """The classifiers, then the detectors, of the upstream stages fusion stacks."""
    classifiers = [FusionInput(n, CLASSIFIER, c) for n, c in models_to_score(upstream, FUSION_STAGES).items()]
    detectors = [FusionInput(n, DETECTOR, d["checkpoint"])
                 for n, d in detectors_to_score(upstream, FUSION_STAGES).items()]
    return classifiers + detectors


@torch.no_grad()
def attack_probability(model: torch.nn.Module, loader: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Each window's softmax probability of attack (as evaluate reports it) and its label."""
    logits, y = predict(model, loader)
    return probability_of_attack(logits).numpy(), y.numpy()


def score_inputs(inputs: list[FusionInput], loader: Iterable, device) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every input's per-window score over ``loader``'s split, batched, and the split's labels."""
    columns, labels = {}, None
    for item in inputs:
        model = load_model(item.checkpoint, device)
        if item.kind == CLASSIFIER:
            columns[item.name], labels = attack_probability(model, loader)
        else:
            scores, y = anomaly_scores(model, loader)
            columns[item.name], labels = scores.numpy(), y.numpy()
    return columns, labels


def feature_matrix(kinds: dict[str, str], columns: dict[str, np.ndarray]) -> np.ndarray:
    """[windows, inputs] features in the order of ``kinds``: logit of a probability, log of an error."""
    out = []
    for name, kind in kinds.items():
        score = np.asarray(columns[name], dtype=np.float64).reshape(-1)
        if kind == CLASSIFIER:
            p = np.clip(score, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
            out.append(np.log(p) - np.log1p(-p))
        else:
            out.append(np.log(np.maximum(score, ERROR_FLOOR)))
    return np.stack(out, axis=1)


@dataclass(frozen=True)
class FusionModel:
    inputs: dict[str, str]
    """input name -> kind, in feature order."""
    method: str
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    iso_x: list[float] | None
    iso_y: list[float] | None
    threshold: float

    def decision(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        x = (feature_matrix(self.inputs, columns) - np.asarray(self.mean)) / np.asarray(self.scale)
        return x @ np.asarray(self.coef) + self.intercept

    def probability(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """The fused probability of attack of every window (``columns``: input name -> its scores)."""
        z = self.decision(columns)
        if self.method == "isotonic":
            return np.interp(z, self.iso_x, self.iso_y)
        return expit(z)

    def save(self, path: Path) -> None:
        # The inputs as [name, kind] pairs: they give the order of mean, scale and coef, and a JSON
        # object's keys would come back sorted.
        io.write_json(path, {**asdict(self), "inputs": [[name, kind] for name, kind in self.inputs.items()]})

    @classmethod
    def load(cls, path: Path) -> "FusionModel":
        fields = io.read_json(path)
        if isinstance(fields["inputs"], dict):
            raise InputError(f"{path}: a fusion model saved with its inputs as a JSON object, whose key order "
                             "cannot be trusted to match its coefficients; run the fusion stage again")
        return cls(**{**fields, "inputs": {name: kind for name, kind in fields["inputs"]}})


def cannot_fit(y: np.ndarray) -> str | None:
    """Why validation labels ``y`` cannot fit a fusion (None when they can)."""
    attacks, normal = int((y == 1).sum()), int((y == 0).sum())
    if min(attacks, normal) >= MIN_WINDOWS_PER_CLASS:
        return None
    return (f"validation holds {attacks} attack and {normal} normal windows; fusion needs at least "
            f"{MIN_WINDOWS_PER_CLASS} of each to fit and choose C")


def fit_fusion(columns: dict[str, np.ndarray], kinds: dict[str, str], y: np.ndarray, cfg: FusionConfig
               ) -> tuple[FusionModel, dict[str, Any]]:
    """Fit on validation windows (``columns``: input name -> scores, ``y``: their labels); returns the
    model and the choices made, each with the validation numbers that made it."""
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    reason = cannot_fit(y)
    if reason:
        raise ValueError(reason)
    x = feature_matrix(kinds, columns)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    xs = (x - mean) / scale
    folds = int(min(cfg.cv_folds, np.bincount(y, minlength=2).min()))
    cv = StratifiedKFold(n_splits=folds)
    cv_loss = {}
    for c in cfg.c_grid:
        oof = cross_val_predict(_logistic(c), xs, y, cv=cv, method="predict_proba")[:, 1]
        cv_loss[c] = float(skm.log_loss(y, oof, labels=[0, 1]))
    best_c = min(cfg.c_grid, key=lambda c: (cv_loss[c], c))
    fit = _logistic(best_c).fit(xs, y)
    iso_x = iso_y = None
    calibration: dict[str, Any] = {"method": cfg.method}
    if cfg.method == "isotonic":
        oof_z = cross_val_predict(_logistic(best_c), xs, y, cv=cv, method="decision_function")
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(oof_z, y)
        iso_x, iso_y = iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist()
        calibration.update(knots=len(iso_x), fitted_on="out-of-fold decision values of validation")
    model = FusionModel(dict(kinds), cfg.method, mean.tolist(), scale.tolist(), fit.coef_[0].tolist(),
                        float(fit.intercept_[0]), iso_x, iso_y, float("nan"))
    fused = model.probability(columns)
    threshold = choose_threshold(torch.as_tensor(y), torch.as_tensor(fused))
    model = FusionModel(**{**asdict(model), "threshold": threshold["threshold"]})
    choices = {
        "fitted_on": "val",
        "inputs": [{"name": n, "kind": k, "feature": "logit" if k == CLASSIFIER else "log",
                    "val_auroc": float(skm.roc_auc_score(y, columns[n]))} for n, k in kinds.items()],
        "C": {"grid": list(cfg.c_grid), "cv_folds": folds, "cv_log_loss": {str(c): v for c, v in cv_loss.items()},
              "chosen": best_c, "rule": "lowest stratified cross-validated log loss on val, ties to the smaller C"},
        "calibration": calibration,
        "coefficients": dict(zip(kinds, model.coef)),
        "intercept": model.intercept,
        "threshold": threshold,
        "val": {"graphs": int(y.size), "attacks": int(y.sum()), "auroc": float(skm.roc_auc_score(y, fused)),
                "average_precision": float(skm.average_precision_score(y, fused)),
                "log_loss": float(skm.log_loss(y, np.clip(fused, 1e-15, 1 - 1e-15), labels=[0, 1]))},
    }
    return model, choices


def _logistic(c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=1000)
