"""The validation report of exported embeddings: is the space healthy, and does it predict links?

* Geometry, on a fixed random sample of nodes: mean pairwise cosine similarity, PCA components
  needed for 90% of the variance, mean cosine within a node type against across types.
* Held-out link prediction per edge type on the test edges (never seen in training), two ways:
  - sampled, unfiltered: each edge is scored (by the model's decoder) against ``negatives``
    corrupted tails drawn uniformly from the tail's node type. AUC pools all positives and
    negatives; MRR is the mean reciprocal rank of each positive among its own negatives (ties
    count half). Cheap, and comparable across this project's runs only;
  - filtered (``pipeline.kg.ranking``): head and tail prediction against every node of the allowed
    type, every other true edge filtered out, MRR and Hits@1/3/10: the protocol the field reports,
    so these numbers can be set beside published ones and beside the peers of ``bench/kg_peers.py``.
* With a labels file (node_type, node_id, label): macro-F1 of a logistic regression on the
  standardized embeddings of the labelled nodes, under a fixed stratified split, and its mean and
  spread over ``LABEL_SPLITS`` stratified splits (the fixed split only, for a model trained on
  that split's training fold with ``kg.label_weight`` or ``kg.label_input``).
* A 2-D PCA scatter plot of the sample, coloured by node type (or by label).

A collapsed embedding (mean cosine above ``max_cosine`` or fewer than ``min_components``
components) makes :func:`check_collapse` raise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from pipeline import io
from pipeline.errors import InputError, MissingFileError
from pipeline.kg import decoders
from pipeline.kg.cache import KGGraph
from pipeline.kg.loss import rank_metrics

VARIANCE_TARGET = 0.9
LABEL_SPLIT_SEED = 0
LABEL_SPLITS = 5
"""The headline macro-F1 is the fixed split's (seed LABEL_SPLIT_SEED); the report adds its spread over
this many stratified splits, since one test fold of a few hundred nodes moves it by several points."""
EMBEDDING_EDGES = {"all": "every edge of the file (held-out edges included)", "train": "the training graph"}


class EmbeddingCollapsed(RuntimeError):
    """The embedding space collapsed; the message names the model, the numbers and the report."""


def sample_nodes(emb: dict[str, np.ndarray], size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uniform sample of all nodes: (their embeddings, their type index)."""
    types = list(emb)
    counts = np.array([emb[t].shape[0] for t in types])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(offsets[-1], size=min(size, int(offsets[-1])), replace=False))
    type_of = np.searchsorted(offsets, pick, side="right") - 1
    rows = [np.asarray(emb[t][pick[type_of == k] - offsets[k]]) for k, t in enumerate(types)]
    return np.concatenate(rows).astype(np.float64), type_of


def geometry(x: np.ndarray, type_of: np.ndarray) -> dict[str, Any]:
    """Cosine statistics and the PCA dimension of a sample of embeddings."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit.T
    off = ~np.eye(len(x), dtype=bool)
    same = (type_of[:, None] == type_of[None, :]) & off
    across = type_of[:, None] != type_of[None, :]
    centered = x - x.mean(0)
    var = np.linalg.svd(centered, compute_uv=False) ** 2
    ratio = np.cumsum(var) / max(var.sum(), 1e-30)
    return {
        "sample_size": int(len(x)),
        "mean_cosine": float(cos[off].mean()) if off.any() else float("nan"),
        "pca_components_90": int(np.searchsorted(ratio, VARIANCE_TARGET) + 1),
        "within_type_cosine": float(cos[same].mean()) if same.any() else float("nan"),
        "across_type_cosine": float(cos[across].mean()) if across.any() else float("nan"),
    }


def held_out_candidates(graph: KGGraph, negatives: int, seed: int = 0, chunk: int = 1024
                        ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(edge type, heads, tails, corrupted tails [P, negatives]) over the test edges, chunk by chunk:
    the one draw of negatives every scorer of the test split is ranked against."""
    gen = torch.Generator().manual_seed(seed)
    for k, entry in enumerate(graph.edge_types):
        test = graph.edges(k, "test")
        for lo in range(0, test.shape[1], chunk):
            u, v = test[0, lo:lo + chunk], test[1, lo:lo + chunk]
            yield k, u, v, torch.randint(0, graph.num_nodes[entry["dst_alias"]], (u.numel(), negatives), generator=gen)


def rank_held_out(graph: KGGraph, score: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor], negatives: int,
                  seed: int = 0, edge_types: set[int] | None = None) -> dict[str, dict[str, Any]]:
    """AUC and MRR per edge type of ``score(edge type, heads [P], tails [P] or [P, K])`` on the test split
    (of ``edge_types`` only, if given; the negatives drawn are the same either way)."""
    pos: dict[int, list[torch.Tensor]] = {}
    neg: dict[int, list[torch.Tensor]] = {}
    for k, u, v, cand in held_out_candidates(graph, negatives, seed):
        if edge_types is not None and k not in edge_types:
            continue
        pos.setdefault(k, []).append(score(k, u, v))
        neg.setdefault(k, []).append(score(k, u, cand))
    out = {}
    for k in pos:
        auc, mrr = rank_metrics(torch.cat(pos[k]), torch.cat(neg[k]))
        out[graph.edge_type_name(k)] = {"test_edges": int(graph.edges(k, "test").shape[1]), "auc": auc, "mrr": mrr}
    return out


def link_prediction(emb: dict[str, np.ndarray], rel: torch.Tensor, graph: KGGraph, negatives: int,
                    seed: int = 0, decoder: str = "distmult") -> dict[str, dict[str, Any]]:
    """AUC and MRR per edge type on the test split, sampled and unfiltered (see the module
    docstring), scored by ``decoder`` with relation parameters ``rel`` (offsets and scale left out:
    they change no rank within an edge type)."""
    tables = {t: torch.from_numpy(x) for t, x in emb.items()}

    def score(k: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        entry = graph.edge_types[k]
        q = decoders.tail_query(decoder, rel[k].float(), tables[entry["src_alias"]][u])
        hd = tables[entry["dst_alias"]][v]
        if decoder == "rotate":
            diff = (q if v.dim() == 1 else q[:, None, :]) - hd
            return -(diff * diff).sum(-1)
        return (q * hd).sum(-1) if v.dim() == 1 else torch.einsum("pd,pkd->pk", q, hd)

    return rank_held_out(graph, score, negatives, seed)


def label_f1(emb: dict[str, np.ndarray], graph: KGGraph, labels_path: Path,
             test_fraction: float, trained_on_labels: bool = False) -> dict[str, Any]:
    """Macro-F1 of a logistic regression on the embeddings of labelled nodes: on the fixed stratified
    split, and its spread over ``LABEL_SPLITS`` splits. Embeddings trained on the fixed split's
    training fold (``trained_on_labels``) get the fixed split only: another split's test fold
    would hold nodes whose labels the model read."""
    nodes, y = read_labels(graph, labels_path)
    x = np.concatenate([emb[t][idx] for t, idx in nodes.items()])
    splits = 1 if trained_on_labels else LABEL_SPLITS
    return {"labels_file": str(labels_path), "trained_on_labels": trained_on_labels,
            **classify(lambda train: x, y, test_fraction, splits)}


def read_labels(graph: KGGraph, labels_path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(local indices of the labelled nodes per node type, their labels in that order)."""
    if not Path(labels_path).is_file():
        raise MissingFileError(f"{labels_path}: no such file (kg.labels_file)")
    try:
        labels = pd.read_csv(labels_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{labels_path}: empty file; expected a header node_type,node_id,label") from None
    missing = [c for c in ("node_type", "node_id", "label") if c not in labels.columns]
    if missing:
        raise InputError(f"{labels_path}: line 1 (header): missing column(s) {missing}; "
                         "expected node_type,node_id,label")
    blank = (labels[["node_type", "node_id", "label"]].apply(lambda c: c.str.strip()) == "").any(axis=1).to_numpy()
    if blank.any():
        raise InputError(f"{labels_path}: line {int(np.flatnonzero(blank)[0]) + 2}: empty node_type, node_id or label")
    nodes, ys = {}, []
    for t in graph.node_types:
        rows = labels[labels["node_type"] == graph.type_name(t)]
        if rows.empty:
            continue
        ids = graph.node_table(t).column("node_id").to_pandas()
        found = rows["node_id"].map(pd.Series(np.arange(len(ids)), index=ids.values))
        keep = found.notna().to_numpy()
        if keep.any():
            nodes[t] = found[keep].astype(np.int64).to_numpy()
            ys.append(rows["label"].to_numpy()[keep])
    if not nodes:
        raise InputError(f"{labels_path}: no labelled node matches a node of the graph (by node_type and node_id)")
    return nodes, np.concatenate(ys)


def check_labels(graph: KGGraph, labels_path: Path, test_fraction: float) -> dict[str, int]:
    """Fail at preprocess, not hours later, on a labels file that training or the report cannot use
    (see ``read_labels``; also a single class, or too few nodes of a class to split stratified).
    Returns the labelled nodes per node type name."""
    nodes, y = read_labels(graph, labels_path)
    classes = np.unique(y)
    if len(classes) < 2:
        raise InputError(f"{labels_path}: every matched node has label {classes[0]!r}; a classifier needs two classes")
    try:
        label_split(y, test_fraction)
    except ValueError as exc:
        raise InputError(f"{labels_path}: no stratified split with kg.label_test_fraction={test_fraction}: {exc}") from None
    return {graph.type_name(t): int(len(idx)) for t, idx in nodes.items()}


def label_split(y: np.ndarray, test_fraction: float, seed: int = LABEL_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions of a stratified split of the labels ``y``; seed LABEL_SPLIT_SEED is
    the fixed split, the only one whose training fold a label-aware model may have read."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed)


def classify(features: Callable[[np.ndarray], np.ndarray], y: np.ndarray, test_fraction: float,
             splits: int = LABEL_SPLITS) -> dict[str, Any]:
    """Logistic regression on standardized ``features(train positions)`` (features may use the
    training labels, never the test ones) over ``splits`` stratified label splits; the first is
    the fixed split the headline reports."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f1s, accuracies = [], []
    for seed in range(LABEL_SPLIT_SEED, LABEL_SPLIT_SEED + splits):
        train, test = label_split(y, test_fraction, seed)
        x = features(train)
        pred = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x[train], y[train]).predict(x[test])
        f1s.append(float(f1_score(y[test], pred, average="macro")))
        accuracies.append(float((pred == y[test]).mean()))
    spread = np.array(f1s)
    return {"labelled_nodes": int(len(y)), "classes": int(len(np.unique(y))), "train": int(len(train)),
            "test": int(len(test)), "split": f"stratified, test_fraction={test_fraction}, seed={LABEL_SPLIT_SEED}",
            "macro_f1": f1s[0], "accuracy": accuracies[0],
            "macro_f1_over_splits": {"splits": splits, "seeds": f"{LABEL_SPLIT_SEED}..{LABEL_SPLIT_SEED + splits - 1}",
                                     "mean": float(spread.mean()), "std": float(spread.std()),
                                     "min": float(spread.min()), "max": float(spread.max())} if splits > 1 else None}


def pca_plot(x: np.ndarray, colour: np.ndarray, legend: list[str], title: str, path: Path) -> None:
    """2-D PCA scatter of the sample, one colour per node type (or label); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centered = x - x.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    xy = centered @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centered[:, :1], np.zeros(len(x))]
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    for c in np.unique(colour):
        m = colour == c
        ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.6, label=legend[c])
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=7, loc="best")
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def check_collapse(name: str, geo: dict[str, Any], max_cosine: float, min_components: int, report: Path) -> None:
    problems = []
    if geo["mean_cosine"] > max_cosine:
        problems.append(f"mean pairwise cosine {geo['mean_cosine']:.3f} > {max_cosine}")
    if geo["pca_components_90"] < min_components:
        problems.append(f"{geo['pca_components_90']} PCA component(s) explain 90% of the variance (< {min_components})")
    if problems:
        raise EmbeddingCollapsed(f"{name} embeddings collapsed: {'; '.join(problems)} (report: {report}); "
                                 "train longer, lower train.lr, or raise kg.neg_ratio")


def markdown(name: str, report: dict[str, Any]) -> str:
    g = report["geometry"]
    lines = [f"# Embedding report: {name}", "",
             f"{report['nodes']} nodes, {report['dim']} dimensions ({report['model']}), computed on "
             f"{EMBEDDING_EDGES.get(report.get('embedding_edges'), 'the training graph')}: these are the exported "
             "embeddings, which the geometry, plot and label rows describe.", "",
             "| geometry (sample of %d nodes) | value |" % g["sample_size"], "|---|---|",
             f"| mean pairwise cosine | {g['mean_cosine']:.4f} |",
             f"| PCA components for 90% variance | {g['pca_components_90']} |",
             f"| mean cosine within a node type | {g['within_type_cosine']:.4f} |",
             f"| mean cosine across node types | {g['across_type_cosine']:.4f} |", "",
             f"Held-out link prediction, sampled and unfiltered (test edges, {report['negatives']} uniform corrupted "
             "tails each), scored with embeddings of the training graph:", ""]
    lines += edge_split_lines(report.get("edge_split"))
    lines += ["| edge type | test edges | AUC | MRR |", "|---|---|---|---|"]
    for et, m in report["link_prediction"].items():
        lines.append(f"| {et} | {m['test_edges']} | {m['auc']:.4f} | {m['mrr']:.4f} |")
    lp = report["link_prediction_mean"]
    lines.append(f"| **mean over edge types** | | **{lp['auc']:.4f}** | **{lp['mrr']:.4f}** |")
    if report.get("link_prediction_filtered"):
        lines += filtered_lines(report["link_prediction_filtered"])
    if report.get("labels"):
        lab = report["labels"]
        lines += ["", f"Node classification ({lab['labels_file']}): logistic regression on standardized embeddings, "
                      f"{lab['split']}: {lab['train']} train / {lab['test']} test nodes, {lab['classes']} classes.", "",
                  f"macro-F1 **{lab['macro_f1']:.4f}**, accuracy {lab['accuracy']:.4f}"]
        if lab.get("trained_on_labels"):
            lines += ["", "The model was trained with the labels of this split's training fold "
                          "(kg.label_weight > 0 or kg.label_input); its test fold was never read."]
        spread = lab.get("macro_f1_over_splits")
        if spread:
            lines += ["", f"Over {spread['splits']} stratified splits (seeds {spread['seeds']}): macro-F1 "
                          f"{spread['mean']:.4f} ± {spread['std']:.4f} (min {spread['min']:.4f}, max {spread['max']:.4f})."]
    lines += ["", f"![PCA]({Path(report['plot']).name})", ""]
    return "\n".join(lines)


def filtered_lines(filtered: dict[str, Any]) -> list[str]:
    """The filtered-rank table: per relation, then the means over relations and over ranked edges."""
    keys = ("mrr", "hits@1", "hits@3", "hits@10")
    lines = ["", f"Held-out link prediction, filtered ({filtered['protocol']}), the same embeddings:", "",
             "| edge type | test edges | candidates (tail / head) | MRR | Hits@1 | Hits@3 | Hits@10 |",
             "|---|---|---|---|---|---|---|"]
    for et, m in filtered["per_relation"].items():
        cells = " | ".join(f"{m[k]:.4f}" for k in keys)
        lines.append(f"| {et} | {m['test_edges']} | {m['candidates']['tail']} / {m['candidates']['head']} | {cells} |")
    for label, key in (("mean over edge types", "mean_over_relations"), ("mean over ranked edges", "mean_over_edges")):
        cells = " | ".join(f"**{filtered[key][k]:.4f}**" for k in keys)
        lines.append(f"| **{label}** | | | {cells} |")
    return lines


def edge_split_lines(split: dict[str, Any] | None) -> list[str]:
    """How the held-out edges were chosen, so a reader of the markdown alone can judge the AUC."""
    if not split:
        return []
    cap = split.get("holdout_max")
    return [f"Edge split: val_fraction={split['val_fraction']}, test_fraction={split['test_fraction']} "
            f"(at most {cap if cap is not None else 'all'} per edge type and split), seed={split['split_seed']}, "
            f"{split['rule']}; held-out edges are absent from the training graph (messages, degrees and "
            "positives).", ""]


def mean_link_metrics(per_type: dict[str, dict[str, Any]]) -> dict[str, float]:
    if not per_type:
        return {"auc": float("nan"), "mrr": float("nan")}
    return {"auc": float(np.mean([m["auc"] for m in per_type.values()])),
            "mrr": float(np.mean([m["mrr"] for m in per_type.values()]))}
