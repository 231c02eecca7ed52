"""Scores of graph classifiers and anomaly detectors: classification metrics, AUROC and the detectors' per-graph scores."""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
from sklearn import metrics as skm
from torch import nn


@torch.no_grad()
def anomaly_scores(model: nn.Module, loader: Iterable, device: torch.device | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-graph reconstruction error and labels over a loader, gathered on the CPU."""
    device = device if device is not None else next(model.parameters()).device
    model.eval()
    scores, labels = [], []
    for batch in loader:
        batch = batch.to(device)
        scores.append(model.score(batch).float().cpu())
        labels.append(batch.y.cpu())
    if not scores:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(scores), torch.cat(labels)


def auroc(y: torch.Tensor, scores: torch.Tensor) -> float:
    """Area under the ROC curve with attack = positive; NaN when a class is missing."""
    t = y.cpu().numpy()
    if t.size == 0 or t.min() == t.max():
        return float("nan")
    return float(skm.roc_auc_score(t, scores.cpu().numpy()))


def classification_metrics(y_true: torch.Tensor, y_pred: torch.Tensor) -> dict[str, Any]:
    """Binary scores with attack = positive class; defined (0, not a warning) on one-class splits."""
    t, p = y_true.cpu().numpy(), y_pred.cpu().numpy()
    if t.size == 0:
        nan = float("nan")
        return {"accuracy": nan, "precision": nan, "recall": nan, "f1": nan, "balanced_accuracy": nan,
                "confusion": [[0, 0], [0, 0]]}
    with warnings.catch_warnings():
        # A scenario may hold one class only; sklearn then warns about balanced accuracy.
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(skm.balanced_accuracy_score(t, p))
    return {
        "accuracy": float(skm.accuracy_score(t, p)),
        "precision": float(skm.precision_score(t, p, zero_division=0)),
        "recall": float(skm.recall_score(t, p, zero_division=0)),
        "f1": float(skm.f1_score(t, p, zero_division=0)),
        "balanced_accuracy": balanced,
        "confusion": skm.confusion_matrix(t, p, labels=[0, 1]).tolist(),
    }
