"""Teacher and student stages for task: kg, on the one training loop (``pipeline.train.Trainer``).

Both train an encoder on sampled link batches (``LinkBatchLoader`` is the train loader), with the
number of seed edges per step from the measured memory plan, and select the epoch with the best
mean validation AUC over edge types (validation loss breaks ties). The student is distilled
from the teacher: the teacher's embeddings of every node are computed once by layer-wise
inference into ``student/teacher_embeddings/`` (mmap, reused on resume), and the student's loss
mixes the link loss with matching the teacher's link scores and embeddings (``distill.alpha``,
``distill.temperature``, shared with the CAN students).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline import io
from pipeline.config import KGNetConfig
from pipeline.kg.cache import KGGraph
from pipeline.kg.inference import layerwise_embeddings
from pipeline.kg.loss import TeacherTables, distill_loss, link_loss, validate_links
from pipeline.kg.plan import describe_plan, kg_plan_key, plan_kg_batches, plan_summary
from pipeline.kg.sampler import LinkBatchLoader, LinkEvalLoader
from pipeline.memory import MiB
from pipeline.models.hgt import HGT
from pipeline.models.kg_base import KGEncoder
from pipeline.models.sage import HeteroSAGE
from pipeline.train import Selection, Trainer, configure_threads, load_model, seed_everything

SELECTION = Selection("auc", "max", tie_metric="loss", tie_mode="min")
VAL_BATCH_EDGES = 256
TEACHER_TABLES = "teacher_embeddings"


def build_encoder(net: KGNetConfig, graph: KGGraph, align_dim: int | None = None) -> KGEncoder:
    """The encoder a profile asks for, sized to the graph (node counts and message types)."""
    cls = HGT if net.kind == "hgt" else HeteroSAGE
    model = cls(num_nodes=dict(graph.num_nodes), message_types=[list(m) for m in graph.message_types],
                num_edge_types=len(graph.edge_types), hidden=net.hidden, out=net.out, heads=net.heads,
                layers=net.layers, dropout=net.dropout, align_dim=align_dim, jk=net.jk)
    model.set_degrees(graph.csc)
    return model


def open_graph(ctx) -> KGGraph:
    return KGGraph.open(ctx.upstream["preprocess"]["cache_dir"])


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_kg_teacher(ctx) -> dict[str, Any]:
    configure_threads(ctx.profile.train.threads)
    graph = open_graph(ctx)
    seed_everything(ctx.profile.train.seed)
    model = build_encoder(ctx.profile.kg_model.teacher, graph)
    kg = ctx.profile.kg
    loss_fn = link_loss(kg.contrastive_weight, kg.contrastive_temperature)
    return {**fit_encoder(ctx, graph, model, loss_fn), "role": "teacher"}


def run_kg_student(ctx) -> dict[str, Any]:
    configure_threads(ctx.profile.train.threads)
    graph = open_graph(ctx)
    device = ctx.device
    teacher = load_model(ctx.upstream["teacher"]["best_checkpoint"], device="cpu")
    tables = teacher_tables(ctx, graph, teacher, device)
    seed_everything(ctx.profile.train.seed)
    model = build_encoder(ctx.profile.kg_model.student, graph, align_dim=teacher.out_dim)
    kg, distill = ctx.profile.kg, ctx.profile.distill
    loss_fn = distill_loss(tables, distill.alpha, distill.temperature, kg.contrastive_weight,
                           kg.contrastive_temperature)
    host = sum(int(a.nbytes) for a in tables.tables.values())
    summary = fit_encoder(ctx, graph, model, loss_fn, extra_static={"teacher embeddings (host)": host})
    ratio = count_parameters(model) / max(count_parameters(teacher), 1)
    ctx.log.info("student: %d parameters, %.3f of the teacher's %d", count_parameters(model), ratio,
                 count_parameters(teacher))
    return {**summary, "role": "student", "teacher_params": count_parameters(teacher),
            "param_ratio": round(ratio, 4), "distill": {"alpha": distill.alpha, "temperature": distill.temperature}}


def fit_encoder(ctx, graph: KGGraph, model: KGEncoder, loss_fn, extra_static: dict[str, int] | None = None
                ) -> dict[str, Any]:
    """Plan the batches, then run the Trainer on sampled link batches; returns the stage summary."""
    kg, cfg, device = ctx.profile.kg, ctx.profile.train, ctx.device
    fanouts = kg.fanouts[:model.num_layers]
    loader = LinkBatchLoader(graph, kg.max_seed_edges, fanouts, kg.neg_ratio, cfg.seed, kg.steps_per_epoch,
                             kg.sampler)
    val = LinkEvalLoader(graph, "val", fanouts, VAL_BATCH_EDGES, kg.val_edges_per_type, kg.eval_negatives,
                         seed=kg.split_seed, sampler=kg.sampler)
    if len(val) == 0:
        raise ValueError(f"{graph.path}: no validation edges (graph too small for kg.val_fraction="
                         f"{kg.val_fraction}); raise kg.val_fraction or use a larger graph")
    model.to(device)
    key = kg_plan_key(model, graph, loader, device, ctx.profile.safety_factor, kg.max_seed_edges)
    budget, plan = plan_kg_batches(model, loader, loss_fn, device, ctx.profile.safety_factor, kg.max_seed_edges,
                                   ctx.dir / "memory_plan.json", key, extra_static=extra_static, amp=cfg.amp,
                                   log=ctx.log.info)
    loader.max_nodes = plan.seed_edges
    ctx.log.info("%s: %d parameters on %s; %s; %d steps per epoch; %d validation batches",
                 type(model).__name__, count_parameters(model), device, describe_plan(graph, plan), len(loader),
                 len(val))
    trainer = Trainer(model, loss_fn, loader, val, validate_links, cfg, ctx.dir, ctx.log, device=device,
                      selection=SELECTION, resume_key=ctx.fingerprint,
                      memory_plan={"planned_mb": round(plan.predicted_bytes / MiB, 1),
                                   "device_total_mb": round(budget.total / MiB, 1)})
    result = trainer.fit()
    return {"best_checkpoint": str(result.best_path), "best_epoch": result.best_epoch, "best_val": result.best_metrics,
            "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
            "params": count_parameters(model), "batch_plan": plan_summary(plan), "steps_per_epoch": len(loader)}


def teacher_tables(ctx, graph: KGGraph, teacher: KGEncoder, device: torch.device) -> TeacherTables:
    """The teacher's embedding of every node, by layer-wise inference, cached in the stage folder.

    Keyed by the teacher stage's fingerprint: a resumed student reuses them, a new teacher does not.
    """
    kg = ctx.profile.kg
    folder = ctx.dir / TEACHER_TABLES
    stamp = ctx.upstream["teacher"]["fingerprint"]
    meta = folder / "meta.json"
    if not (meta.exists() and io.read_json(meta).get("teacher") == stamp):
        ctx.log.info("computing the teacher's embeddings of all %d nodes (layer-wise inference)",
                     sum(graph.num_nodes.values()))
        emb = layerwise_embeddings(teacher, graph, kg.export_chunk_nodes, kg.export_chunk_edges, device,
                                   progress=ctx.log.info)
        with io.atomic_path(folder, is_dir=True) as tmp:
            for t, arr in emb.items():
                np.save(tmp / f"{t}.npy", arr)
            io.write_json(tmp / "meta.json", {"teacher": stamp, "dim": teacher.out_dim})
        del emb
    tables = {t: np.load(folder / f"{t}.npy", mmap_mode="r") for t in graph.node_types}
    return TeacherTables(tables, teacher.rel, teacher.rel_bias)
