"""The profile of task: kg (knowledge-graph embeddings): the graph, sampling, losses, export and report
(``kg``) and the teacher and student encoders (``kg_model``).

Shared keys are in ``pipeline.config``; loading, layering and overrides too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.config import Profile, Section, resolve_path


class KGNetConfig(Section):
    """One knowledge-graph encoder (the teacher or the student)."""

    kind: Literal["hgt", "sage"] = "hgt"
    """HGT (heterogeneous attention) or GraphSAGE (one SAGEConv per message type, summed)."""
    hidden: int = Field(256, ge=1)
    """Width of the learnable node embeddings and of every message-passing layer."""
    out: int = Field(512, ge=1)
    """Width of the exported embedding (a per-type linear head after the last layer)."""
    heads: int = Field(8, ge=1)
    """Attention heads (HGT only); hidden and out must be divisible by it."""
    layers: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    jk: Literal["last", "cat"] = "last"
    """Output head on the last layer, or on all layers' outputs concatenated (jumping knowledge)."""
    id_min_degree: int = Field(0, ge=0)
    """Nodes with fewer training edges share one embedding row per type (0: every node has its own)."""
    decoder: Literal["distmult", "complex", "rotate"] = "distmult"
    """Link score on the embeddings (``pipeline.kg.decoders``); complex and rotate need an even ``out``."""

    @model_validator(mode="after")
    def _divisible_by_heads(self) -> "KGNetConfig":
        if self.kind == "hgt" and (self.hidden % self.heads or self.out % self.heads):
            raise ValueError(f"hidden ({self.hidden}) and out ({self.out}) must be divisible by heads ({self.heads})")
        if self.decoder != "distmult" and self.out % 2:
            raise ValueError(f"decoder {self.decoder} reads the embedding as complex halves: out ({self.out}) must be even")
        return self


def _kg_student() -> KGNetConfig:
    return KGNetConfig(kind="sage", hidden=64, out=128, heads=4, layers=2)


class KGModelConfig(Section):
    """Encoders of the knowledge-graph chain: the teacher and the student distilled from it."""

    teacher: KGNetConfig = Field(default_factory=KGNetConfig)
    student: KGNetConfig = Field(default_factory=_kg_student)


class KGConfig(Section):
    """Knowledge-graph workload (task: kg): input, held-out edges, sampling, losses, export, report."""

    file: str = "kg.csv"
    """Edge file inside data.dataset (or an absolute path): PrimeKG kg.csv or a typed edge list (CSV/TSV)."""
    layout: Literal["auto", "primekg", "edge_list"] = "auto"
    """primekg: the 12-column kg.csv; edge_list: src_type,src_id,relation,dst_type,dst_id; auto: by header."""
    include_node_types: list[str] | None = None
    """Keep only edges whose two endpoints are of these node types (None: all)."""
    limit_nodes: int | None = Field(None, ge=2)
    """Keep only the most connected nodes (and the edges among them); None keeps all."""
    val_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of each edge type held out for model selection (early stopping)."""
    test_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of each edge type held out for the export report (link-prediction AUC and MRR)."""
    holdout_max: int | None = Field(10_000, ge=1)
    """Cap on held-out edges per edge type and split."""
    split_seed: int = 0
    fanouts: list[int] = Field(default_factory=lambda: [10, 5])
    """Sampled neighbours per node and message type, per hop (an L-layer model uses the first L)."""
    neg_ratio: int = Field(1, ge=1)
    """Negative edges per positive (head or tail corrupted uniformly within its node type)."""
    contrastive_weight: float = Field(0.0, ge=0)
    """Weight of an in-batch InfoNCE term added to the link loss (0: off)."""
    contrastive_temperature: float = Field(0.2, gt=0)
    max_seed_edges: int = Field(1024, ge=1)
    """Upper bound on positive edges per step; the memory plan may choose fewer."""
    steps_per_epoch: int | None = Field(None, ge=1)
    """Steps per epoch; None: one pass over the train edges."""
    sampler: Literal["auto", "torch", "pyg"] = "auto"
    """Neighbour sampler: PyG's (needs pyg-lib or torch-sparse), the pure-torch one, or auto."""
    val_edges_per_type: int = Field(500, ge=1)
    """Validation edges per edge type scored after each epoch."""
    eval_negatives: int = Field(100, ge=1)
    """Corrupted tails each held-out edge is ranked against (sampled, unfiltered MRR; AUC pools them)."""
    select_on: Literal["auc", "mrr"] = "auc"
    """Validation metric that picks the best epoch and drives early stopping: the mean over edge types
    of the sampled AUC or of the sampled MRR."""
    filtered_candidates: int = Field(500, ge=1)
    """Candidates per query of the filtered ranks when a full ranking does not fit the budget (OGB's K)."""
    export_edges: Literal["all", "train"] = "all"
    """Graph the exported embeddings read. all: every edge of the file, held-out ones included (what
    downstream use wants); train: the training graph only. The report's link prediction always
    scores the test edges with training-graph embeddings, so it never sees the edges it ranks."""
    export_chunk_nodes: int = Field(4096, ge=1)
    """Destination nodes per chunk of layer-wise inference."""
    export_chunk_edges: int = Field(262_144, ge=1)
    """Incoming edges per chunk of layer-wise inference (bounds its peak memory)."""
    labels_file: str | None = None
    """CSV node_type,node_id,label inside data.dataset: adds a logistic-regression macro-F1 to the report."""
    label_test_fraction: float = Field(0.2, gt=0, lt=1)
    """Test share of the fixed stratified split of labelled nodes."""
    label_weight: float = Field(0.0, ge=0)
    """Weight of a node-classification term (a linear head on the embedding, cross-entropy) on the
    training fold of the fixed label split, added to the link loss (0: label-free embeddings). The
    test fold is never read in training; the report then judges the fixed split only."""
    label_input: bool = False
    """Feed the training fold's labels to the encoder as an input of the labelled nodes (a learned
    vector per class), never a node's own label: training hides the labels of a batch's seed nodes,
    export embeds each node in a pass that hides the labels of its group (``pipeline.kg.inference``).
    Test-fold labels are never read; the report then judges the fixed split only."""
    report_sample: int = Field(2000, ge=10)
    """Nodes sampled for the similarity and PCA statistics of the report."""
    collapse_max_cosine: float = Field(0.9, gt=0, le=1)
    """Export fails if the mean pairwise cosine similarity exceeds this (collapsed embedding)."""
    collapse_min_components: int = Field(5, ge=1)
    """Export fails if fewer PCA components than this explain 90% of the variance."""

    @model_validator(mode="after")
    def _holdout_leaves_training(self) -> "KGConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1 (no training edges would remain)")
        if not self.fanouts or min(self.fanouts) < 1:
            raise ValueError(f"fanouts must be a non-empty list of positive neighbour counts, got {self.fanouts}")
        if self.label_weight > 0 and not self.labels_file:
            raise ValueError(f"label_weight={self.label_weight} needs kg.labels_file (the labels to train on)")
        if self.label_input and not self.labels_file:
            raise ValueError("label_input=true needs kg.labels_file (the labels to read)")
        return self

    @property
    def reads_labels(self) -> bool:
        """Whether training reads the labels file's training fold (as a loss term or as an input)."""
        return self.label_weight > 0 or self.label_input


class KGProfile(Profile):
    """A profile of task: kg."""

    task: Literal["kg"] = "kg"
    kg: KGConfig = Field(default_factory=KGConfig)
    """Knowledge-graph workload settings."""
    kg_model: KGModelConfig = Field(default_factory=KGModelConfig)
    """Knowledge-graph teacher and student encoders."""

    @model_validator(mode="after")
    def _kg_fanouts_cover_layers(self) -> "KGProfile":
        layers = max(self.kg_model.teacher.layers, self.kg_model.student.layers)
        if len(self.kg.fanouts) < layers:
            raise ValueError(f"kg.fanouts has {len(self.kg.fanouts)} hop(s) but kg_model uses {layers} layers: "
                             "give one fanout per layer")
        return self

    @property
    def kg_path(self) -> Path:
        """The knowledge-graph edge file: kg.file inside data.dataset (or absolute)."""
        return resolve_path(self.kg.file, self.dataset_path)

    @property
    def labels_path(self) -> Path | None:
        """The node-labels file: kg.labels_file inside data.dataset (or absolute); None without one."""
        return resolve_path(self.kg.labels_file, self.dataset_path) if self.kg.labels_file else None
