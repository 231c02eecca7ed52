"""Losses and validation for link prediction on sampled batches, the Trainer's hooks.

* Link loss: binary cross-entropy of DistMult logits, positives against their corrupted
  negatives, pooled over edge types (each pair counts once).
* Contrastive term (optional, ``kg.contrastive_weight``): InfoNCE over the batch's positives of
  one edge type: each head must pick its own tail among the tails of the other positives.
* Distillation (student): the link loss, plus ``alpha`` x (soft-target BCE against the teacher's
  logits at temperature T, scaled by T^2, as in the CAN students; and 1 - cosine between the
  student's aligned embedding and the teacher's), sharing ``distill.temperature`` / ``alpha``.
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
        q = F.normalize(emb[t.src_type][t.pos[0]] * model.rel[t.edge_type], dim=-1)
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


class TeacherTables:
    """The teacher's exported embeddings (one array per node type) and its relation vectors.

    Read-only arrays (mmap) on the host: a batch gathers only its own rows.
    """

    def __init__(self, tables: dict[str, np.ndarray], rel: torch.Tensor, rel_bias: torch.Tensor | None = None):
        self.tables = tables
        self.rel = rel.detach().float().cpu()
        self.rel_bias = rel_bias.detach().float().cpu() if rel_bias is not None else torch.zeros(rel.shape[0])

    def gather(self, n_id: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        return {t: torch.from_numpy(np.asarray(self.tables[t][ids.cpu().numpy()])).to(device)
                for t, ids in n_id.items() if ids.numel()}

    def score(self, edge_type: int, h_src: torch.Tensor, h_dst: torch.Tensor) -> torch.Tensor:
        rel = self.rel[edge_type].to(h_src.device)
        return (h_src * rel * h_dst).sum(-1) / h_src.shape[-1] ** 0.5 + float(self.rel_bias[edge_type])


def distill_loss(teacher: TeacherTables, alpha: float, temperature: float, contrastive_weight: float = 0.0,
                 contrastive_temperature: float = 0.2) -> LossFn:
    """The student's loss hook: (1 - alpha) link loss + alpha (score KD + embedding alignment)."""
    base = link_loss(contrastive_weight, contrastive_temperature)

    def loss_fn(model: nn.Module, batch: KGBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hard, emb = base(model, batch)
        if alpha == 0:
            return hard, emb
        # the model returns its seed nodes (a prefix of n_id) when the batch is trimmed per layer
        t_emb = teacher.gather({t: batch.n_id[t][:h.shape[0]] for t, h in emb.items()},
                               next(model.parameters()).device)
        s_pos, s_neg = pair_logits(model, emb, batch)
        t_pos, t_neg = pair_logits(teacher, t_emb, batch)
        soft = torch.sigmoid(torch.cat([t_pos, t_neg]).float() / temperature)
        kd = F.binary_cross_entropy_with_logits(torch.cat([s_pos, s_neg]).float() / temperature, soft)
        kd = kd * temperature ** 2
        if model.align is not None:
            cos = [F.cosine_similarity(model.align(emb[t]).float(), t_emb[t].float(), dim=-1) for t in emb]
            kd = kd + (1 - torch.cat(cos)).mean()
        return (1 - alpha) * hard + alpha * kd, emb
    return loss_fn


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
