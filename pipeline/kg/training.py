"""Teacher and student stages for task: kg, on the one training loop (``pipeline.train.Trainer``).

Both train an encoder on sampled link batches (``LinkBatchLoader`` is the train loader), with the
number of seed edges per step from the measured memory plan, and select the epoch with the best
mean validation AUC over edge types (validation loss breaks ties). The student is distilled
from the teacher: the frozen teacher runs on each of the student's sampled batches (no
gradient), and the student's loss mixes the link loss with matching the teacher's link scores
and embeddings on that batch (``distill.alpha``, ``distill.temperature``, shared with the CAN
students). The teacher sees what the student sees: a batch's positive edges are out of both
models' messages and degrees (see ``pipeline.kg.loss.distill_loss``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.kg.cache import KGGraph
from pipeline.kg.config import KGNetConfig
from pipeline.kg.loss import distill_loss, link_loss, validate_links, with_label_term
from pipeline.kg.models.base import KGEncoder
from pipeline.kg.models.hgt import HGT
from pipeline.kg.models.sage import HeteroSAGE
from pipeline.kg.plan import describe_plan, kg_plan_key, plan_kg_batches, plan_summary
from pipeline.kg.report import label_split, read_labels
from pipeline.kg.sampler import LinkBatchLoader, LinkEvalLoader
from pipeline.train import Selection, Trainer, count_parameters

VAL_BATCH_EDGES = 256


def selection(kg) -> Selection:
    """The epoch selection ``kg.select_on`` names; exact ties go to the lower validation loss."""
    return Selection(kg.select_on, "max", tie_metric="loss", tie_mode="min", profile_key="kg.val_fraction")


def build_encoder(net: KGNetConfig, graph: KGGraph, align_dim: int | None = None, num_classes: int = 0,
                  label_head: bool = True, input_labels: dict[str, torch.Tensor] | None = None) -> KGEncoder:
    """The encoder a profile asks for, sized to the graph (node counts and message types); with a
    classifier head over ``num_classes`` (``label_head``), and reading ``input_labels`` (see
    ``training_labels``) as an input when given."""
    cls = HGT if net.kind == "hgt" else HeteroSAGE
    model = cls(num_nodes=dict(graph.num_nodes), message_types=[list(m) for m in graph.message_types],
                num_edge_types=len(graph.edge_types), hidden=net.hidden, out=net.out, heads=net.heads,
                layers=net.layers, dropout=net.dropout, align_dim=align_dim, jk=net.jk,
                id_min_degree=net.id_min_degree, num_classes=num_classes, label_head=label_head,
                label_input_types=list(input_labels or {}), decoder=net.decoder)
    model.set_degrees(graph.csc)
    model.assign_id_rows(graph.csc)
    if input_labels:
        model.set_input_labels(input_labels)
    return model


def encoder_for_profile(profile, net: KGNetConfig, graph: KGGraph, align_dim: int | None = None
                      ) -> tuple[KGEncoder, dict[str, torch.Tensor]]:
    """The teacher's or student's encoder with the profile's use of labels (a classifier head for
    ``kg.label_weight``, label inputs for ``kg.label_input``), and the label term's targets."""
    targets, classes = training_labels(profile, graph)
    kg = profile.kg
    model = build_encoder(net, graph, align_dim, classes, label_head=kg.label_weight > 0,
                          input_labels=targets if kg.label_input else None)
    return model, targets if kg.label_weight > 0 else {}


def training_labels(profile, graph: KGGraph) -> tuple[dict[str, torch.Tensor], int]:
    """The label term's targets: class index per node of each labelled type, -1 outside the
    training fold of the report's fixed label split (``label_split``), and the number of classes.
    ({}, 0) for label-free training (no ``kg.label_weight`` or ``kg.label_input``)."""
    if not profile.kg.reads_labels:
        return {}, 0
    nodes, y = read_labels(graph, profile.labels_path)
    classes, index = np.unique(y, return_inverse=True)
    in_train = np.zeros(len(y), dtype=bool)
    in_train[label_split(y, profile.kg.label_test_fraction)[0]] = True
    targets, start = {}, 0
    for t, idx in nodes.items():
        keep = in_train[start:start + len(idx)]
        target = torch.full((graph.num_nodes[t],), -1, dtype=torch.long)
        target[torch.from_numpy(idx[keep])] = torch.from_numpy(index[start:start + len(idx)][keep])
        targets[t] = target
        start += len(idx)
    return targets, len(classes)


def open_graph(ctx) -> KGGraph:
    return KGGraph.open(ctx.upstream["preprocess"]["cache_dir"])


def teacher_loss(profile):
    """The teacher's link loss (plus the contrastive term)."""
    kg = profile.kg
    return link_loss(kg.contrastive_weight, kg.contrastive_temperature)


def student_loss(profile, teacher: torch.nn.Module):
    """The student's loss: the link loss mixed with matching the frozen ``teacher`` on each batch."""
    kg, distill = profile.kg, profile.distill
    return distill_loss(teacher, distill.alpha, distill.temperature, kg.contrastive_weight, kg.contrastive_temperature)


def train_loader(profile, graph: KGGraph, model: KGEncoder) -> LinkBatchLoader:
    """Sampled link batches for ``model`` (one fanout per layer), at most kg.max_seed_edges seeds
    until the memory plan sets the step's size."""
    kg = profile.kg
    return LinkBatchLoader(graph, kg.max_seed_edges, kg.fanouts[:model.num_layers], kg.neg_ratio, profile.train.seed,
                           kg.steps_per_epoch, kg.sampler)


def fit_encoder(ctx, graph: KGGraph, model: KGEncoder, loss_fn, teacher: torch.nn.Module | None = None,
                label_targets: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Plan the batches, then run the Trainer on sampled link batches (plus the label term when
    ``label_targets`` are given; see ``training_labels``); returns the stage summary."""
    kg, cfg, device = ctx.profile.kg, ctx.profile.train, ctx.device
    loader = train_loader(ctx.profile, graph, model)
    val = LinkEvalLoader(graph, "val", loader.fanouts, VAL_BATCH_EDGES, kg.val_edges_per_type, kg.eval_negatives,
                         seed=kg.split_seed, sampler=kg.sampler)
    if len(val) == 0:
        raise InputError(f"{graph.path}: no validation edges (graph too small for kg.val_fraction="
                         f"{kg.val_fraction}); raise kg.val_fraction or use a larger graph")
    model.to(device)
    if model.label_input_types:
        ctx.log.info("label input: training-fold labels of %s; each batch hides its seed nodes' own",
                     ", ".join(graph.type_name(t) for t in model.label_input_types))
    if label_targets:
        ctx.log.info("label term (weight %g) on the training fold of %s: %s", kg.label_weight,
                     ctx.profile.labels_path,
                     ", ".join(f"{graph.type_name(t)} {int((y >= 0).sum()):,}" for t, y in label_targets.items()))
        loss_fn = with_label_term(loss_fn, {t: y.to(device) for t, y in label_targets.items()}, kg.label_weight)
    key = kg_plan_key(model, graph, loader, device, ctx.profile.safety_factor, kg.max_seed_edges)
    budget, plan = plan_kg_batches(model, loader, loss_fn, device, ctx.profile.safety_factor, kg.max_seed_edges,
                                   ctx.dir / "memory_plan.json", key, teacher=teacher, amp=cfg.amp,
                                   log=ctx.log.info)
    loader.max_nodes = plan.seed_edges
    if model.id_min_degree:
        shared = model.shared_rows()
        ctx.log.info("nodes below %d training edges share their type's embedding row: %s", model.id_min_degree,
                     ", ".join(f"{graph.type_name(t)} {n:,} of {graph.num_nodes[t]:,}" for t, n in shared.items()))
    ctx.log.info("%s: %d parameters on %s; %s; %d steps per epoch; %d validation batches",
                 type(model).__name__, count_parameters(model), device, describe_plan(graph, plan), len(loader),
                 len(val))
    trainer = Trainer(model, loss_fn, loader, val, validate_links, cfg, ctx.dir, ctx.log, device=device,
                      selection=selection(kg), resume_key=ctx.fingerprint,
                      memory_plan=budget.planned(plan.predicted_bytes),
                      find_unused_parameters=True)  # a batch need not hold every node and edge type
    result = trainer.fit()
    return {**result.record(), "batch_plan": plan_summary(plan), "steps_per_epoch": len(loader)}
