"""What label-free structure alone reaches on ACM, under the exact protocol of the export report.

The KG chain's quality targets on ACM (held-out link AUC >= 0.90, paper macro-F1 >= 0.85) are
judged against these rows: classic link heuristics scored on the same test edges against the
same draw of corrupted tails (``pipeline.kg.report.held_out_candidates``), and logistic
regressions on hand-built structural features of the papers under the report's label split.
Everything is computed from the training graph, as the embeddings are; the F1 rows are repeated
on the full graph (held-out edges put back), which is what the exported embeddings read. One F1 row
is not label-free: label propagation over co-authorship from the training labels, the classic
ceiling of structure-only node classification on this graph.

Needs ``../shared/data/hetero/acm`` (not copied into the repository); skipped when absent.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch

from bench.data_bench import row
from pipeline.config import load_profile
from pipeline.kg.build import kg_preprocess
from pipeline.kg.cache import KGGraph
from pipeline.kg.report import classify, rank_held_out, read_labels

NAME = "acm_structural_baselines"
NEGATIVES = 100


def _adjacency(graph: KGGraph, k: int, splits: tuple[str, ...]) -> sp.csr_matrix:
    entry = graph.edge_types[k]
    ei = torch.cat([graph.edges(k, s) for s in splits], dim=1).numpy()
    shape = (graph.num_nodes[entry["src_alias"]], graph.num_nodes[entry["dst_alias"]])
    return sp.csr_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=shape)


def _pairs(matrix: sp.csr_matrix, u: torch.Tensor, v: torch.Tensor) -> np.ndarray:
    """matrix[u, v] for heads [P] and tails [P] or [P, K]."""
    rows = np.broadcast_to(u.numpy()[:, None] if v.dim() == 2 else u.numpy(), tuple(v.shape))
    return np.asarray(matrix[rows.reshape(-1).copy(), v.numpy().reshape(-1).copy()]).reshape(tuple(v.shape))


def _coauthored(paper_author: sp.csr_matrix) -> sp.csr_matrix:
    """Paper x paper: how many authors two distinct papers share."""
    shared = (paper_author @ paper_author.T).tocsr()
    shared.setdiag(0)
    shared.eliminate_zeros()
    return shared


def _row_normalized(matrix: sp.csr_matrix) -> sp.csr_matrix:
    sums = np.asarray(matrix.sum(1)).ravel()
    return sp.diags(1.0 / np.maximum(sums, 1)) @ matrix


def link_heuristics(graph: KGGraph, author_edge: int, subject_edge: int) -> list[dict[str, Any]]:
    """Degree and co-authorship heuristics on the test split of ACM's two edge types."""
    pa, ps = _adjacency(graph, author_edge, ("train",)), _adjacency(graph, subject_edge, ("train",))
    coauthored = _coauthored(pa)
    paths = (coauthored @ pa).tocsr()            # paper -> co-author's paper -> its authors
    coauthor_subjects = (coauthored @ ps).tocsr()  # paper -> co-author's paper -> its subject
    author_degree = np.log1p(np.asarray(pa.sum(0)).ravel())
    subject_degree = np.asarray(ps.sum(0)).ravel()

    def scorer(fn):
        return lambda k, u, v: torch.from_numpy(np.asarray(fn(k, u, v), dtype=np.float64)).float()

    candidates = {
        "author degree": (author_edge, lambda k, u, v: author_degree[v.numpy()]),
        "co-authorship paths (x3, log) + author degree":
            (author_edge, lambda k, u, v: 3 * np.log1p(_pairs(paths, u, v)) + author_degree[v.numpy()]),
        "subject popularity": (subject_edge, lambda k, u, v: subject_degree[v.numpy()]),
        "co-authors' subjects + popularity":
            (subject_edge, lambda k, u, v: _pairs(coauthor_subjects, u, v) + 1e-4 * subject_degree[v.numpy()]),
    }
    rows, best = [], {}
    for label, (k, fn) in candidates.items():
        metrics = rank_held_out(graph, scorer(fn), NEGATIVES, edge_types={k})[graph.edge_type_name(k)]
        best[k] = max(best.get(k, 0.0), metrics["auc"])
        rows.append(row(NAME, f"link AUC, {graph.edge_type_name(k)}: {label}", round(metrics["auc"], 4)))
    rows.append(row(NAME, "link AUC, mean over edge types of the best heuristic per type",
                    round(float(np.mean(list(best.values()))), 4)))
    return rows


def label_features(graph: KGGraph, author_edge: int, subject_edge: int, splits: tuple[str, ...], papers: np.ndarray,
                   y: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Structural descriptions of the labelled ``papers`` (local indices, labels ``y``), as functions
    of a label split's training positions. The third names every author of the paper and of its
    co-authored papers (a column each): the most a label-free embedding with its own row for every
    author could carry. The last one reads the training labels of co-authored papers (label
    propagation): not label-free."""
    pa, ps = _adjacency(graph, author_edge, splits), _adjacency(graph, subject_edge, splits)
    coauthored = _row_normalized(_coauthored(pa))
    subject = ps.toarray()
    # built once: the classifier calls each description once per label split
    with_around = np.hstack([subject, coauthored @ subject])[papers]
    with_authors = np.hstack([subject, pa.toarray(), (coauthored @ pa).toarray()])[papers]
    classes = np.unique(y)

    def coauthor_labels(train: np.ndarray) -> np.ndarray:
        known = np.zeros((pa.shape[0], len(classes)))
        known[papers[train], np.searchsorted(classes, y[train])] = 1
        return np.hstack([subject, coauthored @ known])[papers]

    return {"own subject": lambda train: subject[papers],
            "own subject + co-authors' papers' subjects": lambda train: with_around,
            "own subject + own authors + co-authored papers' authors (one column per node)":
                lambda train: with_authors,
            "own subject + co-authored papers' training labels (uses labels)": coauthor_labels}


def acm_structural_baselines() -> list[dict[str, Any]]:
    profile = load_profile("acm")
    labels = profile.labels_path
    if not labels.exists():
        return [row(NAME, f"skipped: {labels} not found (the ACM graph lives in ../shared)", 0)]
    log = logging.getLogger("bench.kg_quality")
    graph = KGGraph.open(kg_preprocess(profile, log)["cache_dir"])
    kinds = {graph.type_name(e["dst_alias"]): k for k, e in enumerate(graph.edge_types)}
    author_edge, subject_edge = kinds["author"], kinds["subject"]
    paper = graph.edge_types[author_edge]["src_alias"]
    nodes, y = read_labels(graph, labels)
    rows = link_heuristics(graph, author_edge, subject_edge)
    for graph_name, splits in (("training graph", ("train",)), ("full graph", ("train", "val", "test"))):
        for label, features in label_features(graph, author_edge, subject_edge, splits, nodes[paper], y).items():
            res = classify(features, y, profile.kg.label_test_fraction)
            spread = res["macro_f1_over_splits"]
            rows.append(row(NAME, f"paper macro-F1 ({graph_name}): {label}: fixed split / mean of {spread['splits']}",
                            f"{res['macro_f1']:.4f} / {spread['mean']:.4f}"))
    return rows
