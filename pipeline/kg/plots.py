"""The knowledge-graph workload's part of the run report: each exported model's validation report
(``export/<role>/report.json``) as tables and figures.

* Geometry of the embedding space and the PCA scatter the export drew (``export/<role>/pca.png``).
* Held-out link prediction per edge type: AUC and MRR as a table and a bar chart
  (``export/<role>/link_prediction.png``); and, where the export ranked them by the filtered
  protocol, MRR and Hits@k per relation.
* Node classification from the labels file, when the profile has one: macro-F1 and accuracy.

Final metrics (tracking) are ``<role>/<metric>``, ``<role>/<edge type>/{auc,mrr}`` and
``<role>/<relation>/filtered_{mrr,hits_at_k}``; the headline numbers are each role's mean link AUC
and MRR, its filtered MRR and Hits@10 (mean over relations), and macro-F1 where there are labels.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.report.figures import new_figure, save_png
from pipeline.report.html import Image, Note, Section, Table
from pipeline.report.records import RunRecords
from pipeline.report.workload import Metrics, WorkloadReport

GEOMETRY = ("mean_cosine", "pca_components_90", "within_type_cosine", "across_type_cosine")
RANKS = ("mrr", "hits@1", "hits@3", "hits@10")


def reports(records: RunRecords) -> dict[str, dict[str, Any]]:
    """role -> its report.json, for every model the export stage reported on."""
    out = {}
    for path in sorted((records.path / "export").glob("*/report.json")):
        try:
            out[path.parent.name] = json.loads(path.read_text())
        except ValueError:
            continue
    return dict(sorted(out.items(), key=lambda item: item[0] != "teacher"))


def final_metrics(records: RunRecords) -> dict[str, Metrics]:
    out: Metrics = {}
    for role, report in reports(records).items():
        out.update({f"{role}/{k}": v for k, v in (report.get("geometry") or {}).items() if k in GEOMETRY})
        out.update({f"{role}/link_{k}": v for k, v in (report.get("link_prediction_mean") or {}).items()})
        for edge, numbers in (report.get("link_prediction") or {}).items():
            out.update({f"{role}/{metric_name(edge)}/{k}": numbers.get(k) for k in ("auc", "mrr")})
        filtered = report.get("link_prediction_filtered") or {}
        out.update({f"{role}/filtered_{_safe(k)}": v for k, v in (filtered.get("mean_over_relations") or {}).items()})
        for relation, numbers in (filtered.get("per_relation") or {}).items():
            out.update({f"{role}/{metric_name(relation)}/filtered_{_safe(k)}": v for k, v in numbers.items()
                        if k in RANKS})
        labels = report.get("labels") or {}
        out.update({f"{role}/label_{k}": labels[k] for k in ("macro_f1", "accuracy") if k in labels})
    return {"export": out} if out else {}


def headline(records: RunRecords) -> Metrics:
    out: Metrics = {}
    for role, report in reports(records).items():
        mean = report.get("link_prediction_mean") or {}
        out.update({f"{role}/link_auc": mean.get("auc"), f"{role}/link_mrr": mean.get("mrr")})
        filtered = (report.get("link_prediction_filtered") or {}).get("mean_over_relations") or {}
        out.update({f"{role}/filtered_{_safe(k)}": filtered.get(k) for k in ("mrr", "hits@10") if k in filtered})
        if report.get("labels"):
            out[f"{role}/label_macro_f1"] = report["labels"].get("macro_f1")
    return out


def sections(records: RunRecords) -> list[Section]:
    found = reports(records)
    if not found:
        return [Section("Embeddings", [Note("export has not written a report (export/<role>/report.json) "
                                            "in this run")])]
    return [Section(f"Embeddings: {role}", role_blocks(records.path / "export" / role, role, report))
            for role, report in found.items()]


def role_blocks(folder: Path, role: str, report: dict[str, Any]) -> list:
    geometry = report.get("geometry") or {}
    blocks: list = [Table(("measure", "value"), [(k, geometry[k]) for k in GEOMETRY if k in geometry],
                          caption=f"geometry of a sample of {geometry.get('sample_size', '?')} nodes "
                                  f"({report.get('nodes', '?')} nodes, {report.get('dim', '?')} dimensions, "
                                  f"{report.get('model', role)})")]
    links = report.get("link_prediction") or {}
    rows = [(edge, n.get("test_edges"), n.get("auc"), n.get("mrr")) for edge, n in links.items()]
    mean = report.get("link_prediction_mean") or {}
    if rows:
        rows.append(("mean over edge types", None, mean.get("auc"), mean.get("mrr")))
    blocks.append(Table(("edge type", "test edges", "AUC", "MRR"), rows,
                        caption=f"held-out link prediction ({report.get('negatives', '?')} corrupted tails per edge)",
                        empty="no held-out test edges"))
    if links:
        blocks.append(Image(link_figure(folder, role, links), f"{role}: held-out link prediction per edge type"))
    filtered = report.get("link_prediction_filtered") or {}
    if filtered.get("per_relation"):
        rows = [(rel, n.get("test_edges"), *(n.get(k) for k in RANKS)) for rel, n in filtered["per_relation"].items()]
        rows.append(("mean over relations", None, *((filtered.get("mean_over_relations") or {}).get(k) for k in RANKS)))
        blocks.append(Table(("relation", "test edges", *RANKS), rows,
                            caption=f"held-out link prediction, {filtered.get('protocol', 'filtered protocol')}"))
    labels = report.get("labels")
    if labels:
        blocks.append(Table(("labels file", "labelled nodes", "classes", "macro-F1", "accuracy"),
                            [(Path(str(labels.get("labels_file"))).name, labels.get("labelled_nodes"),
                              labels.get("classes"), labels.get("macro_f1"), labels.get("accuracy"))],
                            caption="node classification: logistic regression on the embeddings"))
    pca = folder / "pca.png"
    blocks.append(Image(pca, f"{role}: 2-D PCA of a node sample ({pca.relative_to(folder.parent.parent)})"))
    return blocks


def link_figure(folder: Path, role: str, links: dict[str, dict[str, Any]]) -> Path:
    edges = list(links)
    fig = new_figure(8, 0.35 * len(edges) + 1.4)
    ax = fig.subplots()
    y = np.arange(len(edges))
    for offset, key, colour in ((-0.2, "auc", "C0"), (0.2, "mrr", "C2")):
        values = [float(links[e].get(key) or 0.0) for e in edges]
        ax.barh(y + offset, values, height=0.38, color=colour, label=key.upper())
    ax.axvline(0.5, color="grey", ls=":", lw=0.8)
    ax.set(yticks=y, xlim=(0, 1), title=f"{role}: held-out link prediction")
    ax.set_yticklabels(edges, fontsize=7)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    return save_png(fig, folder / "link_prediction.png")


def metric_name(edge: str) -> str:
    """An edge type (``src -[relation]- dst``) as part of an MLflow metric name: ``src.relation.dst``
    with anything but letters, digits, ``_``, ``-`` and ``.`` replaced."""
    parts = re.fullmatch(r"(.+?) -\[(.+)\]- (.+)", edge)
    text = ".".join(parts.groups()) if parts else edge
    return re.sub(r"[^A-Za-z0-9_\-.]+", "_", text).strip("_")


def _safe(key: str) -> str:
    """``hits@10`` -> ``hits_at_10``: MLflow metric names take no ``@``."""
    return key.replace("@", "_at_")


REPORT = WorkloadReport(sections=sections, final_metrics=final_metrics, headline=headline)
