"""Per-window scores of every evaluated model, kept by the evaluate stage for the report's curves.

``evaluate/scores/<model>.npz`` holds, for each split it scored, ``score.<split>`` (float32: a
classifier's softmax probability of attack, a detector's reconstruction error) and
``label.<split>`` (int8, 1 = attack), plus ``kind`` (``classifier``, ``detector`` or ``fusion``,
whose score is the fused probability of attack) and ``threshold`` (0.5 for a classifier, whose
argmax is that probability against 0.5; the validation-chosen threshold for a detector and the fusion). A few bytes per window: the report draws ROC and
precision-recall curves and histograms from them without running a model again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline import io

SCORES_DIR = "scores"
CLASSIFIER, DETECTOR, FUSION = "classifier", "detector", "fusion"
CLASSIFIER_STAGES = ("teacher", "student", "curriculum")
"""Upstream stages whose done record names a ``best_checkpoint`` of a graph classifier (or, with
several models, a ``classifiers`` mapping of name -> checkpoint)."""
DETECTOR_STAGES = ("autoencoder", "student")
"""Upstream stages whose done record may hold ``anomaly_detectors``: name -> {checkpoint, threshold}."""


def models_to_score(upstream: dict[str, dict[str, Any]], stages: Iterable[str] = CLASSIFIER_STAGES) -> dict[str, str]:
    """Model name -> best checkpoint, for every classifier stage of ``stages`` this run has finished."""
    models: dict[str, str] = {}
    for stage in (s for s in CLASSIFIER_STAGES if s in stages):
        record = upstream.get(stage) or {}
        if record.get("classifiers"):
            models.update(record["classifiers"])
        elif record.get("best_checkpoint"):
            models[stage] = record["best_checkpoint"]
    return models


def detectors_to_score(upstream: dict[str, dict[str, Any]], stages: Iterable[str] = DETECTOR_STAGES
                       ) -> dict[str, dict[str, Any]]:
    """Detector name -> {checkpoint, threshold, ...}, for every finished stage of ``stages`` that trained one."""
    detectors: dict[str, dict[str, Any]] = {}
    for stage in (s for s in DETECTOR_STAGES if s in stages):
        detectors.update((upstream.get(stage) or {}).get("anomaly_detectors") or {})
    return detectors


@dataclass(frozen=True)
class ModelScores:
    model: str
    kind: str
    threshold: float
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    """split -> (scores, labels), in the split's window order."""


def write_scores(folder: Path, scores: ModelScores) -> Path:
    arrays: dict[str, np.ndarray] = {"kind": np.array(scores.kind), "threshold": np.array(scores.threshold)}
    for split, (score, label) in scores.splits.items():
        arrays[f"score.{split}"] = np.asarray(score, dtype=np.float32)
        arrays[f"label.{split}"] = np.asarray(label, dtype=np.int8)
    path = folder / SCORES_DIR / f"{scores.model}.npz"
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path


def read_scores(folder: Path) -> list[ModelScores]:
    """Every model's scores in an evaluate folder (none for a run evaluated before they were kept)."""
    out = []
    for path in sorted((folder / SCORES_DIR).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            splits = {key.split(".", 1)[1]: (data[key], data[f"label.{key.split('.', 1)[1]}"])
                      for key in data.files if key.startswith("score.")}
            out.append(ModelScores(model=path.stem, kind=str(data["kind"]), threshold=float(data["threshold"]),
                                   splits=splits))
    return out
