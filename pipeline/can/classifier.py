"""The GAT classifier as the teacher stage trains it: the model for a cache, class weights, its loss and its validation."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.can.data.cache import GraphBatch, GraphSplit
from pipeline.can.metrics import classification_metrics
from pipeline.can.models.gat import GATWithJK
from pipeline.train import predict


def build_model(profile, manifest: dict[str, Any], split: GraphSplit) -> GATWithJK:
    """The teacher for a cache: vocabulary and feature widths from the data, dims from the profile."""
    return GATWithJK(num_ids=len(manifest["vocab"]) + 1, node_features=split.num_node_features,
                     edge_features=split.num_edge_features, **profile.model.model_dump())


def class_weights(y: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Inverse-frequency weights n / (C * n_c): a balanced split gets all ones."""
    counts = torch.bincount(y.long(), minlength=num_classes).float().clamp_min(1)
    return counts.sum() / (num_classes * counts)


def cross_entropy_loss(weight: torch.Tensor | None):
    """The teacher's loss hook for the Trainer: weighted cross-entropy on graph labels."""
    def loss_fn(model: nn.Module, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch)
        return nn.functional.cross_entropy(logits.float(), batch.y, weight=weight), logits
    return loss_fn


def validate_classifier(model: nn.Module, loader) -> dict[str, float]:
    """Validation metrics of a graph classifier, F1 of the attack class among them (the selection key)."""
    logits, y = predict(model, loader)
    metrics = classification_metrics(y, logits.argmax(-1))
    metrics["loss"] = float(nn.functional.cross_entropy(logits, y)) if y.numel() else float("nan")
    return {k: v for k, v in metrics.items() if isinstance(v, float)}
