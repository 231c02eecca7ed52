"""Embeddings of a trained encoder: layer-wise inference over the graph, the validation report, and
the embedding files (what the export stage of task: kg writes; see ``pipeline.kg.stages.export``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import torch

from pipeline import io
from pipeline.kg.cache import KGGraph
from pipeline.kg.inference import embed_nodes
from pipeline.kg.ranking import EmbeddingScorer, filtered_link_prediction
from pipeline.memory import device_memory
from pipeline.kg.report import geometry, label_f1, link_prediction, markdown, mean_link_metrics, pca_plot, sample_nodes

ROLES = ("teacher", "student")
WRITE_ROWS = 16_384
RANKING_SHARE = 0.25
"""Share of the host budget for filtered-rank score chunks; the rest holds the embeddings and the process."""


def export_model(profile, graph: KGGraph, export_graph: KGGraph, model, role: str, out: Path,
                 device: torch.device | str = "cpu", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One model's embeddings files and report in ``out``. The held-out link metrics score the test
    edges with embeddings of the training ``graph``; the files, geometry and label F1 use embeddings
    of ``export_graph`` (the same graph, or one with every edge)."""
    kg = profile.kg
    inference_s = 0.0

    def embeddings(g: KGGraph, what: str) -> dict[str, np.ndarray]:
        nonlocal inference_s
        if progress:
            progress(f"{role}: layer-wise inference on {what}: {sum(g.num_nodes.values())} nodes, "
                     f"{sum(int(col.numel()) for _, col in g.csc.values())} messages")
        started = time.perf_counter()
        emb = embed_nodes(model, g, kg.export_chunk_nodes, kg.export_chunk_edges, device, progress, kg.split_seed)
        inference_s += time.perf_counter() - started
        return emb

    emb = embeddings(graph, "the training graph")
    model.cpu()
    links = link_prediction(emb, model.rel.detach(), graph, kg.eval_negatives, seed=kg.split_seed, decoder=model.decoder)
    started = time.perf_counter()
    filtered = filtered_link_prediction(graph, EmbeddingScorer(model, graph, emb),
                                        ranking_budget(profile.safety_factor), kg.filtered_candidates, kg.split_seed)
    if progress:
        progress(f"{role}: filtered ranks of the test edges in {time.perf_counter() - started:.1f}s")
    if export_graph is not graph:
        model.set_degrees(export_graph.csc)
        emb = embeddings(export_graph, "every edge")
    write_embeddings(graph, emb, out / "embeddings.parquet", out / "embeddings.csv")
    return embedding_report(profile, graph, emb, links, model, role, out, inference_s, filtered)


def ranking_budget(safety_factor: float) -> int:
    """Bytes a chunk of filtered-rank scores may take: a share of the host's memory budget (ranks
    are computed on the host, beside the embedding tables)."""
    return int(device_memory(torch.device("cpu")).total * safety_factor * RANKING_SHARE)


def embedding_report(profile, graph: KGGraph, emb: dict[str, np.ndarray], links: dict[str, dict[str, Any]], model,
                     role: str, out: Path, inference_s: float, filtered: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The report of one model's exported embeddings ``emb`` and its held-out link metrics ``links``
    (scored on training-graph embeddings); writes report.json, report.md and pca.png."""
    kg = profile.kg
    x, type_of = sample_nodes(emb, kg.report_sample, seed=kg.split_seed)
    geo = geometry(x, type_of)
    labels = None
    if kg.labels_file:
        labels = label_f1(emb, graph, profile.labels_path, kg.label_test_fraction, kg.reads_labels)
    legend = [graph.type_name(t) for t in emb]
    pca_plot(x, type_of, legend, f"{role} embeddings: PCA of {len(x)} sampled nodes, by node type", out / "pca.png")
    report = {"model": type(model).__name__, "role": role, "dim": int(next(iter(emb.values())).shape[1]),
              "nodes": int(sum(a.shape[0] for a in emb.values())), "embedding_edges": kg.export_edges,
              "geometry": geo, "negatives": kg.eval_negatives,
              "link_prediction": links, "link_prediction_mean": mean_link_metrics(links),
              "link_prediction_filtered": filtered, "decoder": getattr(model, "decoder", "distmult"), "labels": labels,
              "edge_split": {"val_fraction": kg.val_fraction, "test_fraction": kg.test_fraction,
                             "holdout_max": kg.holdout_max, "split_seed": kg.split_seed,
                             "rule": "per edge type; every node keeps one random training edge"},
              "plot": str(out / "pca.png"), "inference_seconds": inference_s}
    io.write_json(out / "report.json", report)
    io.write_text(out / "report.md", markdown(role, report))
    return report


def write_embeddings(graph: KGGraph, emb: dict[str, np.ndarray], parquet_path: Path, csv_path: Path) -> None:
    """Both files in row chunks (never the whole table as Python objects), each renamed into place."""
    dim = int(next(iter(emb.values())).shape[1])
    schema = pa.schema([("node_type", pa.string()), ("node_id", pa.string()), ("node_name", pa.string())]
                       + [(f"e{j}", pa.float32()) for j in range(dim)])
    with io.atomic_path(parquet_path) as pq_tmp, io.atomic_path(csv_path) as csv_tmp:
        with pq.ParquetWriter(pq_tmp, schema) as pq_out, pcsv.CSVWriter(csv_tmp, schema) as csv_out:
            for t, table in emb.items():
                nodes = graph.node_table(t)
                name = graph.type_name(t)
                for lo in range(0, table.shape[0], WRITE_ROWS):
                    block = np.asarray(table[lo:lo + WRITE_ROWS], dtype=np.float32)
                    n = block.shape[0]
                    columns = [pa.array([name] * n, pa.string()), nodes.column("node_id").slice(lo, n),
                               nodes.column("node_name").slice(lo, n)]
                    columns += [pa.array(block[:, j]) for j in range(dim)]
                    batch = pa.Table.from_arrays([pa.chunked_array(c) if isinstance(c, pa.ChunkedArray) else c
                                                  for c in columns], schema=schema)
                    pq_out.write_table(batch)
                    csv_out.write_table(batch)


def headline_numbers(report: dict[str, Any]) -> dict[str, Any]:
    out = {"mean_cosine": report["geometry"]["mean_cosine"], "pca_components_90": report["geometry"]["pca_components_90"],
           "link_auc": report["link_prediction_mean"]["auc"], "link_mrr": report["link_prediction_mean"]["mrr"]}
    if report.get("link_prediction_filtered"):
        out["filtered_mrr"] = report["link_prediction_filtered"]["mean_over_relations"]["mrr"]
        out["filtered_hits@10"] = report["link_prediction_filtered"]["mean_over_relations"]["hits@10"]
    if report.get("labels"):
        out["label_macro_f1"] = report["labels"]["macro_f1"]
        spread = report["labels"]["macro_f1_over_splits"]
        if spread:
            out["label_macro_f1_mean_over_splits"] = spread["mean"]
    return out


def headline(report: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in headline_numbers(report).items())
