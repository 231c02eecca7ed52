"""Export stage for task: kg: embeddings of every node of every trained model, and their report.

For each model of the chain (teacher, then student), in ``export/<role>/``::

    embeddings.parquet, embeddings.csv   node_type, node_id, node_name, e0 .. e{D-1}
    report.json, report.md               geometry, held-out link prediction, label macro-F1
    pca.png                              2-D PCA of a node sample, coloured by type (or label)

Embeddings come from layer-wise inference over node chunks (``pipeline.kg.inference``), so peak
memory is set by ``kg.export_chunk_nodes`` / ``kg.export_chunk_edges``, not by the graph's edge
count. Each model is run twice (``kg.export_edges: all``): on the training graph, whose embeddings
score the held-out test edges for the report (a test edge must not carry its own message), and on
every edge of the file, whose embeddings are the ones written out and described by the rest of the
report (held-out edges are known facts; downstream use should see them). Files are written in row
chunks through a temporary name and renamed. A collapsed embedding fails the stage after every
report is written, so the reports can be read.
"""
from __future__ import annotations

from typing import Any

from pipeline.kg.cache import SPLITS, KGGraph
from pipeline.kg.embeddings import ROLES, export_model, headline, headline_numbers
from pipeline.kg.report import EmbeddingCollapsed, check_collapse
from pipeline.train import configure_threads, load_model


def run(ctx) -> dict[str, Any]:
    configure_threads(ctx.profile.train.threads)
    kg = ctx.profile.kg
    roles = [r for r in ROLES if r in ctx.upstream]
    if not roles:
        raise ValueError("export needs a trained model: add teacher (and optionally student) to stages")
    graph = KGGraph.open(ctx.upstream["preprocess"]["cache_dir"])
    export_graph = graph.with_edges(SPLITS if kg.export_edges == "all" else ("train",))
    results, failures = {}, []
    for role in roles:
        out = ctx.dir / role
        out.mkdir(parents=True, exist_ok=True)
        model = load_model(ctx.upstream[role]["best_checkpoint"], device="cpu")
        report = export_model(ctx.profile, graph, export_graph, model, role, out, ctx.device, ctx.log.info)
        ctx.log.info("%s: %s", role, headline(report))
        results[role] = {"dir": str(out), **headline_numbers(report)}
        try:
            check_collapse(role, report["geometry"], kg.collapse_max_cosine, kg.collapse_min_components,
                           out / "report.md")
        except EmbeddingCollapsed as exc:
            ctx.log.error("%s", exc)
            failures.append(str(exc))
    if failures:
        raise EmbeddingCollapsed(" | ".join(failures))
    return {"models": results}
