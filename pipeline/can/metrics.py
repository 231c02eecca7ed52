"""Scores of graph classifiers and anomaly detectors: the metrics of one split, AUROC and the
detectors' per-graph scores.

``split_metrics`` is what evaluate reports for every (model, split): ranking scores from a
continuous attack score (AUROC, average precision), scores at the operating point (MCC, balanced
accuracy, F1, precision, recall, accuracy, confusion), and two references that keep a number from
hiding how easy its split is: the F1 of calling every window an attack (``trivial_f1``) and the
best F1 any threshold reaches on the split's own labels (``oracle_f1``, an upper bound that shows
the calibration gap; it is computed with the split's labels and is never used to choose anything).

Undefined is NaN, never a 0 that reads like a failed model:

* a split without attack windows has no positives, so precision, recall, F1, AUROC, average
  precision, MCC, trivial and oracle F1 are NaN there (``UNDEFINED_WITHOUT_ATTACKS``) and
  ``near_trivial`` is None; accuracy, balanced accuracy (the normal windows' recall) and the
  confusion matrix still describe it;
* a split without normal windows has no ROC curve and a 0/0 MCC: both NaN;
* MCC is 0/0 whenever the split holds one class. scikit-learn returns 0 there, which reads like a
  chance-level model, so it is NaN here. On a split with both classes a constant prediction (every
  window called an attack, say) keeps scikit-learn's 0: that is the informative value.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn

NEAR_TRIVIAL_MARGIN = 0.03
"""A row whose F1 is within this of its split's trivial F1 is marked near trivial."""
UNDEFINED_WITHOUT_ATTACKS = ("precision", "recall", "f1", "auroc", "average_precision", "mcc", "trivial_f1",
                             "oracle_f1", "near_trivial")
"""The scores of the attack class: undefined on a split without attack windows."""


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


def probability_of_attack(logits: torch.Tensor) -> torch.Tensor:
    """Each window's softmax probability of the attack class (class 1), from a classifier's logits."""
    return torch.softmax(logits.float(), dim=-1)[:, 1]


def auroc(y: torch.Tensor, scores: torch.Tensor) -> float:
    """Area under the ROC curve with attack = positive; NaN when a class is missing."""
    t = _array(y)
    if t.size == 0 or t.min() == t.max():
        return float("nan")
    return float(skm.roc_auc_score(t, _array(scores)))


def classification_metrics(y_true, y_pred) -> dict[str, Any]:
    """Binary scores with attack = positive class; defined (0, not a warning) on one-class splits."""
    t, p = _array(y_true), _array(y_pred)
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


def split_metrics(y_true, score, y_pred) -> dict[str, Any]:
    """Every score of one model on one split, attack = positive class.

    ``y_true``: 0/1 labels; ``score``: a continuous attack score, higher meaning more likely an
    attack (a classifier's softmax probability of attack, a detector's anomaly score); ``y_pred``:
    the hard predictions at the model's operating threshold. Tensors or arrays, one value per window.
    Returns ``classification_metrics`` of the predictions plus ``prevalence`` (share of attack
    windows), ``auroc`` and ``average_precision`` of the score, ``mcc``, ``trivial_f1`` (F1 of
    predicting every window an attack: 2p/(1+p) at prevalence p), ``oracle_f1`` (best F1 over every
    threshold on this split, never used to choose anything) and ``near_trivial`` (F1 within
    ``NEAR_TRIVIAL_MARGIN`` of the trivial F1). Undefined scores are NaN (None for ``near_trivial``);
    see the module docstring.
    """
    t, s, p = _array(y_true).astype(np.int64), _array(score).astype(np.float64), _array(y_pred).astype(np.int64)
    if not t.shape == s.shape == p.shape:
        raise ValueError(f"labels {t.shape}, scores {s.shape} and predictions {p.shape} differ in shape")
    nan = float("nan")
    n, attacks = t.size, int(t.sum())
    has_attacks, both = attacks > 0, 0 < attacks < n
    out = classification_metrics(t, p)
    prevalence = attacks / n if n else nan
    out.update(
        prevalence=prevalence,
        auroc=float(skm.roc_auc_score(t, s)) if both else nan,
        average_precision=float(skm.average_precision_score(t, s)) if has_attacks else nan,
        mcc=float(skm.matthews_corrcoef(t, p)) if both else nan,
        trivial_f1=2 * prevalence / (1 + prevalence) if has_attacks else nan,
        oracle_f1=oracle_f1(t, s) if has_attacks else nan,
    )
    if not has_attacks:
        out.update({k: nan for k in UNDEFINED_WITHOUT_ATTACKS}, near_trivial=None)
    else:
        out["near_trivial"] = bool(abs(out["f1"] - out["trivial_f1"]) <= NEAR_TRIVIAL_MARGIN)
    return out


def oracle_f1(y_true, score) -> float:
    """The best F1 any threshold on ``score`` reaches against these labels (predicting no window an
    attack counts as F1 0). It reads the labels it is scored on, so it is an upper bound on what a
    threshold chosen elsewhere can reach, not a result; NaN without attack windows."""
    t, s = _array(y_true), _array(score)
    if t.size == 0 or t.max() == 0:
        return float("nan")
    precision, recall, _ = skm.precision_recall_curve(t, s)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return float(f1.max())


def _array(x) -> np.ndarray:
    """A 1-D numpy array of a tensor (on any device) or an array-like."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1)
