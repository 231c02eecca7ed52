"""Losses and validation for link prediction on sampled batches, the Trainer's hooks.

* Link loss: binary cross-entropy of DistMult logits, positives against their corrupted
  negatives, pooled over edge types (each pair counts once).
* Contrastive term (optional, ``kg.contrastive_weight``): InfoNCE over the batch's positives of
  one edge type: each head must pick its own tail among the tails of the other positives.
* Distillation (student): the link loss, plus ``alpha`` x (binary KL from the teacher's link
  probabilities to the student's at temperature T, scaled by T^2, as in the CAN students; and
  1 - cosine between the student's aligned embedding and the teacher's), sharing
  ``distill.temperature`` / ``alpha``. The frozen teacher runs on the student's batch.
* Label term (optional, ``kg.label_weight``): cross-entropy of a linear classifier on the
  embeddings of the batch's labelled seed nodes, training fold of the fixed label split only.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.kg.sampler import KGBatch

LossFn = Callable[[nn.Module, KGBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def pair_logits(model: nn.Module, emb: dict[str, torch.Tensor], batch: KGBatch
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of all positive and all negative pairs of the batch (concatenated over edge types)."""
    pos, neg = [], []
    for t in batch.targets:
        hs, hd = emb[t.src_type], emb[t.dst_type]
        pos.append(model.score(t.edge_type, hs[t.pos[0]], hd[t.pos[1]]))
        neg.append(model.score(t.edge_type, hs[t.neg[0]], hd[t.neg[1]]))
    return torch.cat(pos), torch.cat(neg)


def link_bce(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    logits = torch.cat([pos, neg]).float()
    labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).float()
    return F.binary_cross_entropy_with_logits(logits, labels)


def contrastive(model: nn.Module, emb: dict[str, torch.Tensor], batch: KGBatch, temperature: float) -> torch.Tensor:
    """In-batch InfoNCE per edge type on cosine similarity of (head x relation, tail)."""
    losses, weights = [], []
    for t in batch.targets:
        if t.pos.shape[1] < 2:
            continue
        q = F.normalize(model.tail_query(t.edge_type, emb[t.src_type][t.pos[0]]), dim=-1)
        k = F.normalize(emb[t.dst_type][t.pos[1]], dim=-1)
        logits = (q @ k.T).float() / temperature
        losses.append(F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device)))
        weights.append(logits.shape[0])
    if not losses:
        return torch.zeros((), device=next(model.parameters()).device)
    w = torch.tensor(weights, dtype=torch.float32, device=losses[0].device)
    return (torch.stack(losses) * w).sum() / w.sum()


def link_loss(contrastive_weight: float = 0.0, temperature: float = 0.2) -> LossFn:
    """The teacher's loss hook: link BCE (+ weighted InfoNCE)."""
    def loss_fn(model: nn.Module, batch: KGBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        emb = model(batch)
        loss = link_bce(*pair_logits(model, emb, batch))
        if contrastive_weight > 0:
            loss = loss + contrastive_weight * contrastive(model, emb, batch, temperature)
        return loss, emb
    return loss_fn


def soft_link_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean binary KL divergence from the teacher's link probabilities to the student's, both at
    temperature T, scaled by T^2 (Hinton et al.: keeps the gradient's size independent of T).

    Cross-entropy less the soft targets' entropy: 0 exactly when the logits match, so the term
    measures disagreement only (plain BCE against soft targets bottoms out at their entropy,
    which at T=4 is most of the logged loss).
    """
    s, t = student.float() / temperature, teacher.float().detach() / temperature
    soft = torch.sigmoid(t)
    kl = F.binary_cross_entropy_with_logits(s, soft) - F.binary_cross_entropy_with_logits(t, soft)
    return kl * temperature ** 2


def distill_loss(teacher: nn.Module, alpha: float, temperature: float, contrastive_weight: float = 0.0,
                 contrastive_temperature: float = 0.2) -> LossFn:
    """The student's loss hook: (1 - alpha) link loss + alpha (score KD + embedding alignment).

    The frozen teacher (eval mode, no gradient) runs on the student's own batch: the same sampled
    subgraph, without the batch's positive edges in its messages or degrees. Targets taken from
    the teacher's embeddings of the full training graph would not be: there, every training
    positive is already an edge of the graph (a paper's only subject edge is among its messages
    and counted in its degree), a view the student never gets and held-out edges never have.
    On ACM such targets ranked training paper-subject positives below their negatives, and a
    student distilled from them scored held-out paper-subject edges below chance.
    """
    base = link_loss(contrastive_weight, contrastive_temperature)
    teacher.eval()
    teacher.requires_grad_(False)

    def loss_fn(model: nn.Module, batch: KGBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hard, emb = base(model, batch)
        if alpha == 0:
            return hard, emb
        with torch.no_grad():
            t_emb = teacher(batch)
            t_pos, t_neg = pair_logits(teacher, t_emb, batch)
        s_pos, s_neg = pair_logits(model, emb, batch)
        kd = soft_link_kd(torch.cat([s_pos, s_neg]), torch.cat([t_pos, t_neg]), temperature)
        if model.align is not None:
            # both models trim to the batch's seed nodes: the same rows, in the same order
            cos = [F.cosine_similarity(model.align(emb[t]).float(), t_emb[t].float(), dim=-1)
                   for t in emb if t in t_emb]
            kd = kd + (1 - torch.cat(cos)).mean()
        return (1 - alpha) * hard + alpha * kd, emb
    return loss_fn


def with_label_term(loss_fn: LossFn, targets: dict[str, torch.Tensor], weight: float) -> LossFn:
    """``loss_fn`` plus ``weight`` x cross-entropy of the model's classifier on the batch's seed
    nodes that have a training label. ``targets[t]``: class index per node of type ``t`` (-1: no
    label, or a label of the held-out fold), on the training device."""
    def loss_fn_with_labels(model: nn.Module, batch: KGBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, emb = loss_fn(model, batch)
        logits, classes = [], []
        for t, target in targets.items():
            if t not in emb:
                continue
            # the embedding rows are the batch's first nodes of each type (its seeds when trimmed)
            y = target[batch.n_id[t][:emb[t].shape[0]]]
            known = y >= 0
            logits.append(model.classifier(emb[t][known]))
            classes.append(y[known])
        if classes and sum(c.numel() for c in classes):
            loss = loss + weight * F.cross_entropy(torch.cat(logits).float(), torch.cat(classes))
        return loss, emb
    return loss_fn_with_labels


# -- validation ------------------------------------------------------------------------------------

def rank_metrics(pos: torch.Tensor, neg: torch.Tensor) -> tuple[float, float]:
    """AUC of positives against all negatives and MRR of each positive among its negatives.

    ``pos``: [P]; ``neg``: [P, K]. Ties count half (neither optimistic nor pessimistic).
    """
    from sklearn.metrics import roc_auc_score

    pos, neg = pos.float().cpu(), neg.float().cpu()
    if pos.numel() == 0:
        return float("nan"), float("nan")
    labels = np.concatenate([np.ones(pos.numel()), np.zeros(neg.numel())])
    auc = float(roc_auc_score(labels, np.concatenate([pos.numpy(), neg.reshape(-1).numpy()])))
    higher = (neg > pos[:, None]).sum(1).float() + 0.5 * (neg == pos[:, None]).sum(1).float()
    mrr = float((1.0 / (1.0 + higher)).mean())
    return auc, mrr


@torch.no_grad()
def validate_links(model: nn.Module, loader) -> dict[str, float]:
    """Mean over edge types of held-out AUC and MRR (shared corrupted tails), and the BCE loss."""
    device = next(model.parameters()).device
    pos_by: dict[int, list[torch.Tensor]] = {}
    neg_by: dict[int, list[torch.Tensor]] = {}
    for batch in loader:
        batch = batch.to(device)
        emb = model(batch)
        for t in batch.targets:
            hs = emb[t.src_type][t.pos[0]]
            pos = model.score(t.edge_type, hs, emb[t.dst_type][t.pos[1]])
            cand = emb[t.dst_type][t.candidates]
            neg = model.score(t.edge_type, hs[:, None, :], cand[None, :, :])
            pos_by.setdefault(t.edge_type, []).append(pos.float().cpu())
            neg_by.setdefault(t.edge_type, []).append(neg.float().cpu())
    aucs, mrrs, losses = [], [], []
    for k in pos_by:
        pos, neg = torch.cat(pos_by[k]), torch.cat(neg_by[k])
        auc, mrr = rank_metrics(pos, neg)
        aucs.append(auc)
        mrrs.append(mrr)
        losses.append(float(link_bce(pos, neg.reshape(-1))))
    if not aucs:
        return {"auc": float("nan"), "mrr": float("nan"), "loss": float("nan")}
    return {"auc": float(np.mean(aucs)), "mrr": float(np.mean(mrrs)), "loss": float(np.mean(losses))}
