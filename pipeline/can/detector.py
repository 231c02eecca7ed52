"""The VGAE anomaly detector as the autoencoder stage trains it: the model for a cache, its loss, epoch selection, and the threshold chosen on validation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn

from pipeline import io
from pipeline.can.config import VGAEConfig
from pipeline.can.data.cache import GraphBatch, GraphSplit
from pipeline.can.data.loader import GraphLoader
from pipeline.can.metrics import anomaly_scores, auroc
from pipeline.can.models.vgae import VGAE
from pipeline.train import Selection, load_model

NORMAL_QUANTILE = 0.99
"""Threshold quantile of normal validation scores when validation has no attacks."""


def build_vgae(cfg: VGAEConfig, manifest: dict[str, Any], split: GraphSplit, project_to: int | None = None) -> VGAE:
    """A VGAE for a cache: vocabulary and feature widths from the data, dims from the profile."""
    return VGAE(num_ids=len(manifest["vocab"]) + 1, node_features=split.num_node_features,
                edge_features=split.num_edge_features, project_to=project_to, **cfg.model_dump())


def normal_indices(split: GraphSplit) -> torch.Tensor:
    """Graphs without any attack message: what the autoencoder learns to reconstruct."""
    return torch.nonzero(split.y == 0).flatten()


def vgae_loss(model: nn.Module, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The autoencoder's loss hook for the Trainer: reconstruction errors + weighted KL."""
    out = model(batch)
    return model.loss(batch, out)


def detector_selection(val: GraphSplit) -> Selection:
    """AUROC on validation (rounded) when it has both classes, else the normal reconstruction error."""
    labels = set(torch.unique(val.y).tolist())
    if labels == {0, 1}:
        return Selection("auroc_rounded", "max", tie_metric="normal_error", tie_mode="min")
    return Selection("normal_error", "min")


def validate_autoencoder(model: nn.Module, loader) -> dict[str, float]:
    """AUROC of the reconstruction error on validation, and the mean error of its normal graphs."""
    scores, y = anomaly_scores(model, loader)
    normal = scores[y == 0]
    area = auroc(y, scores)
    return {"auroc": area, "auroc_rounded": round(area, AUROC_DECIMALS),
            "normal_error": float(normal.mean()) if normal.numel() else float("nan"),
            "attack_error": float(scores[y == 1].mean()) if bool((y == 1).any()) else float("nan")}


def choose_threshold(y: torch.Tensor, scores: torch.Tensor) -> dict[str, Any]:
    """Score at or above which a graph is called an attack: best F1 on validation (midpoint to
    the next lower score, so small shifts on test data do not flip the boundary graph), or the
    99th percentile of normal scores when validation has no attacks."""
    t, s = y.cpu().numpy(), scores.cpu().double().numpy()
    if t.size and t.min() == 0 and t.max() == 1:
        precision, recall, thresholds = skm.precision_recall_curve(t, s)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = int(np.argmax(f1[:-1]))
        chosen = float(thresholds[best])
        lower = s[s < chosen]
        if lower.size:
            chosen = float((chosen + lower.max()) / 2)
        return {"threshold": chosen, "method": "max F1 on val", "val_f1": float(f1[best])}
    normal = s[t == 0] if t.size else s
    chosen = float(np.quantile(normal, NORMAL_QUANTILE)) if normal.size else float("inf")
    return {"threshold": chosen, "method": f"{NORMAL_QUANTILE:.0%} quantile of normal val scores",
            "val_f1": float("nan")}


def finish_detector(best_path: Path, val_loader: GraphLoader, device: torch.device, out_dir: Path) -> dict[str, Any]:
    """Threshold the best model on validation; write ``threshold.json``; return the detector record.

    ``val_loader`` is the Trainer's: its batches stay under the training plan's node cap, lowered
    with the plan after an out-of-memory back-off."""
    model = load_model(best_path, device)
    scores, y = anomaly_scores(model, val_loader, device)
    chosen = choose_threshold(y, scores)
    record = {"checkpoint": str(best_path), **chosen, "val_auroc": auroc(y, scores)}
    io.write_json(Path(out_dir) / "threshold.json", record)
    return record


AUROC_DECIMALS = 3
"""Selection compares validation AUROC to this many decimals; ties go to the lower normal error."""
