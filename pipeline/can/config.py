"""The profile of task: can (CAN intrusion detection): its data, models, distillation and curriculum sections.

Shared keys (devices, resources, ``train``, ``data.dataset`` and ``data.cache_dir``, ``distill.alpha`` and
``distill.temperature``) are in ``pipeline.config``; loading, layering and overrides too.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config import DataConfig, DistillConfig, Profile, Section


class ColumnsConfig(Section):
    """Column names of header CSV and Parquet files, for names the readers do not recognise by themselves.

    Each key is optional; a key left out falls back to the recognised names (see
    ``pipeline/can/data/columns.py``). Names match case-insensitively, ignoring surrounding whitespace.
    """

    timestamp: str | None = None
    id: str | None = None
    payload: str | None = None
    label: str | None = None

    @field_validator("timestamp", "id", "payload", "label")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name a column (or be left out)")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> "ColumnsConfig":
        named = [v.strip().lower() for v in self.mapping().values()]
        twice = sorted({v for v in named if named.count(v) > 1})
        if twice:
            raise ValueError(f"column(s) {twice} named for more than one field")
        return self

    def mapping(self) -> dict[str, str]:
        """The keys that are set, field -> column name."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class CanDataConfig(DataConfig):
    """Raw CAN captures and how they become window graphs (stage ``preprocess``)."""

    dataset: str = "sample/hcrl_sa"
    """Dataset folder (train_*/ and test_*/ subfolders), relative to data_root unless absolute."""
    layout: Literal["auto", "can_train_and_test", "car_hacking_csv", "car_hacking_txt", "parquet"] = "auto"
    """Raw file layout; auto detects it per file from its first line."""
    window: int = Field(100, ge=2)
    """Messages per window graph."""
    stride: int | None = Field(None, ge=1)
    """Messages between window starts; None means the window length (no overlap)."""
    val_fraction: float = Field(0.2, gt=0, lt=1)
    """Time-contiguous tail of each train file kept for validation."""
    bad_rows: Literal["error", "skip"] = "error"
    """On a malformed row: stop with an error naming file and line, or skip it and count it in the manifest."""
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    """Column names (timestamp, id, payload, label) of header CSV / Parquet files beyond the recognised ones."""
    val_files: str | None = None
    """A glob over train files' paths in the dataset (``"*sonata*"``, quoted in YAML): the files it matches are
    validation whole and never trained on; the others are trained on whole. None: a block of each
    train file is validation (``val_fraction``)."""
    id_agnostic: bool = False
    """Hide which CAN id a node is from every model: an empty vocabulary (every node's id index is 0)
    and node features relative to the id's statistics over its own capture
    (``pipeline.can.data.capture``), so an unseen vehicle's ids are no evidence of attack by themselves."""
    train_glob: str = "train_*"
    test_glob: str = "test_*"


class ModelConfig(Section):
    hidden: int = Field(32, ge=1)
    """Hidden channels per attention head."""
    heads: int = Field(4, ge=1)
    layers: int = Field(3, ge=1)
    id_embed_dim: int = Field(16, ge=1)
    """Width of the learned CAN-id embedding."""
    mlp_hidden: int = Field(64, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


def _small_student() -> "ModelConfig":
    return ModelConfig(hidden=8, heads=4, layers=2, id_embed_dim=8, mlp_hidden=32, dropout=0.1)


class VGAEConfig(Section):
    """A variational graph autoencoder over window graphs (the anomaly-score teacher and its student)."""

    hidden: int = Field(32, ge=1)
    """Hidden channels per attention head of the GAT encoder."""
    heads: int = Field(4, ge=1)
    layers: int = Field(2, ge=1)
    latent_dim: int = Field(16, ge=1)
    """Width of each node's latent (mean and log-std heads)."""
    id_embed_dim: int = Field(16, ge=1)
    """Width of the CAN-id embedding; the id decoder is tied to it (no vocabulary-sized output layer)."""
    dropout: float = Field(0.1, ge=0, lt=1)
    kl_weight: float = Field(0.1, ge=0)
    """Weight of the KL term (per node) against the reconstruction losses."""
    feature_weight: float = Field(1.0, ge=0)
    """Weight of node-feature reconstruction (MSE) in the loss and the anomaly score."""
    id_weight: float = Field(1.0, ge=0)
    """Weight of CAN-id reconstruction (cross-entropy) in the loss and the anomaly score."""
    structure_weight: float = Field(1.0, ge=0)
    """Weight of neighbourhood reconstruction (edge BCE) in the loss and the anomaly score."""
    pair_probes: int = Field(8, ge=1)
    """Node pairs probed per node by the structure decoder (deterministic, so scores are reproducible)."""

    @model_validator(mode="after")
    def _some_reconstruction(self) -> "VGAEConfig":
        if self.feature_weight + self.id_weight + self.structure_weight <= 0:
            raise ValueError("feature_weight, id_weight and structure_weight are all 0: nothing to reconstruct")
        return self


def _small_vgae() -> VGAEConfig:
    return VGAEConfig(hidden=8, heads=2, layers=2, latent_dim=8, id_embed_dim=4)


class CanDistillConfig(DistillConfig):
    """Knowledge distillation of the small students from the teachers (stages ``student``, ``curriculum``)."""

    offload_teacher_to_cpu: bool = True
    """Keep the teacher on the CPU and move it to the device only for the step that needs it."""
    use_teacher_cache: bool = True
    """Compute teacher outputs once into an mmap cache beside the graph cache instead of every epoch."""
    train_baseline: bool = True
    """Also train the same student without distillation (alpha 0), so the gain of KD is measured."""
    vgae_student: bool = True
    """Also distil the small VGAE from the autoencoder (when the chain has an autoencoder)."""
    max_param_ratio: float = Field(0.2, gt=0, le=1)
    """Largest student/teacher parameter ratio the stage accepts without a warning."""


class CurriculumConfig(Section):
    """Easy-to-hard ordering of the normal training graphs by VGAE reconstruction error."""

    pacing: Literal["linear", "root", "geometric", "step"] = "root"
    """How the admitted share of normal graphs grows from start_fraction to end_fraction."""
    start_fraction: float = Field(0.3, gt=0, le=1)
    """Share of normal graphs (the easiest) admitted in the first epoch; attacks are always all in."""
    end_fraction: float = Field(1.0, gt=0, le=1)
    """Share of normal graphs admitted once the ramp is over."""
    ramp_fraction: float = Field(0.5, gt=0, le=1)
    """Share of train.epochs over which the admitted share rises."""
    steps: int = Field(4, ge=1)
    """Number of increments for the step pacing."""
    distill: bool = True
    """Distil from the GAT teacher as the student stage does (distill.temperature/alpha)."""

    @model_validator(mode="after")
    def _ordered(self) -> "CurriculumConfig":
        if self.start_fraction > self.end_fraction:
            raise ValueError("start_fraction must not exceed end_fraction (the curriculum only admits graphs)")
        return self


class FusionConfig(Section):
    """One calibrated detector stacked on the upstream models' per-window scores (stage ``fusion``),
    fitted on validation windows only."""

    method: Literal["logistic", "isotonic"] = "logistic"
    """logistic: logistic regression on the standardised scores; isotonic: the same regression's
    decision value mapped through an isotonic fit to out-of-fold validation labels."""
    c_grid: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0], min_length=1)
    """Inverse L2 strengths tried; the one with the lowest cross-validated log loss on validation is kept."""
    cv_folds: int = Field(5, ge=2)
    """Stratified folds over the validation windows that choose C (fewer when a class has fewer windows)."""

    @field_validator("c_grid")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(not c > 0 for c in value):
            raise ValueError(f"every C must be > 0, got {value}")
        return sorted(set(value))


class EvaluateConfig(Section):
    """What the evaluate stage scores besides the models as trained."""

    score_normalisation: Literal["none", "median_mad", "warmup"] = "none"
    """Also score every model (a classifier on its logit margin, a detector on its error) with its scores
    standardised per capture (``pipeline.can.normalise``):
    median_mad against the capture's own median and MAD, warmup against those of its first
    ``warmup_windows`` windows (taken as benign). Reads no label, but is transductive; none adds no rows."""
    warmup_windows: int = Field(50, ge=2)
    """Windows at the start of each capture whose scores are the reference of the warmup normalisation
    (the cache keeps each window's start row, not its time)."""


class CanProfile(Profile):
    """A profile of task: can."""

    task: Literal["can"] = "can"
    data: CanDataConfig = Field(default_factory=CanDataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The GAT teacher."""
    student_model: ModelConfig = Field(default_factory=_small_student)
    """The GAT student (stages student and curriculum); at most 1/5 of the teacher's parameters."""
    vgae: VGAEConfig = Field(default_factory=VGAEConfig)
    """The VGAE autoencoder teacher (stage autoencoder)."""
    vgae_student: VGAEConfig = Field(default_factory=_small_vgae)
    """The small VGAE distilled from it (stage student)."""
    distill: CanDistillConfig = Field(default_factory=CanDistillConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    """The stacked detector over the teacher, autoencoder and student outputs (stage fusion)."""
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    """Extra scoring of the evaluate stage (per-capture score normalisation)."""

    @model_validator(mode="after")
    def _stride_fits(self) -> "CanProfile":
        if self.data.stride is not None and self.data.stride > self.data.window:
            raise ValueError("data.stride must not exceed data.window (messages would be skipped)")
        return self
