"""Profile schema, layered loading (defaults < profile < environment < -O overrides) and validation.

Every error names the file (or override) that set the offending key, the dotted key, and the fix.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = PROJECT_ROOT / "profiles"
DEFAULTS_FILE = PROFILES_DIR / "defaults.yaml"
DATA_ROOT_ENV = "PIPELINE_DATA_ROOT"
KNOWN_STAGES = ("preprocess", "autoencoder", "teacher", "student", "curriculum", "export", "evaluate")


class ProfileError(InputError):
    """A profile that cannot be used; the message names the source file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ColumnsConfig(_Strict):
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


class DataConfig(_Strict):
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
    limit_rows: int | None = Field(None, ge=1)
    """Read at most this many rows per file (dry runs on a slice)."""
    bad_rows: Literal["error", "skip"] = "error"
    """On a malformed row: stop with an error naming file and line, or skip it and count it in the manifest."""
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    """Column names (timestamp, id, payload, label) of header CSV / Parquet files beyond the recognised ones."""
    cache_dir: str = "data/cache"
    """Where graph caches live, relative to the project root unless absolute; shared by runs."""
    train_glob: str = "train_*"
    test_glob: str = "test_*"


class ModelConfig(_Strict):
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


class VGAEConfig(_Strict):
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


class DistillConfig(_Strict):
    """Knowledge distillation of the small students from the teachers (stage ``student``)."""

    temperature: float = Field(4.0, gt=0)
    """Softmax temperature T of KL(teacher || student) on logits / T (the term is scaled by T^2)."""
    alpha: float = Field(0.7, ge=0, le=1)
    """Weight of the distillation term; the hard-label loss gets 1 - alpha (0 = no distillation)."""
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


class CurriculumConfig(_Strict):
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


class TrainConfig(_Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    """Graphs per optimizer micro-batch."""
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(5, ge=1)
    """Epochs without validation improvement before early stopping."""
    amp: bool = True
    """Mixed precision on CUDA (ignored elsewhere)."""
    class_weighting: bool = True
    """Weight the loss by inverse class frequency of the train split."""
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads; None uses the cpus the job was given."""


class Resources(_Strict):
    mem_gb: float | None = Field(None, gt=0)
    gpus: int | None = Field(None, ge=0)
    """GPUs per node; a training stage with more than one runs data-parallel, one rank per GPU."""
    nodes: int | None = Field(None, ge=1)
    """Nodes of a training stage (default 1); more than one runs it data-parallel across them."""
    tasks_per_node: int | None = Field(None, ge=1)
    """Ranks per node of a training stage: defaults to ``gpus`` (one per GPU), else 1; set it for CPU ranks (gloo)."""
    cpus: int | None = Field(None, ge=1)
    time_min: int | None = Field(None, ge=1)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpu_mem_gb: float | None = Field(None, gt=0)
    """Memory of one GPU of the kind the stage gets (e.g. 16, 40, 80); `make plan` sizes batches for it."""
    extra: dict[str, str | int] = Field(default_factory=dict)
    """Extra sbatch options, e.g. {constraint: a100}."""

    def over(self, base: "Resources") -> "Resources":
        """This stage's settings on top of ``base``: unset fields fall back to it."""
        merged = base.model_dump()
        for key, value in self.model_dump().items():
            if key == "extra":
                merged["extra"] = {**base.extra, **value}
            elif value is not None:
                merged[key] = value
        return Resources(**merged)


class KGNetConfig(_Strict):
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

    @model_validator(mode="after")
    def _divisible_by_heads(self) -> "KGNetConfig":
        if self.kind == "hgt" and (self.hidden % self.heads or self.out % self.heads):
            raise ValueError(f"hidden ({self.hidden}) and out ({self.out}) must be divisible by heads ({self.heads})")
        return self


def _kg_student() -> KGNetConfig:
    return KGNetConfig(kind="sage", hidden=64, out=128, heads=4, layers=2)


class KGModelConfig(_Strict):
    """Encoders of the knowledge-graph chain: the teacher and the student distilled from it."""

    teacher: KGNetConfig = Field(default_factory=KGNetConfig)
    student: KGNetConfig = Field(default_factory=_kg_student)


class KGConfig(_Strict):
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
    """Corrupted tails each held-out edge is ranked against (MRR; AUC pools them)."""
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


class DryRunConfig(_Strict):
    """How `make dry-run` slices a profile so the full chain runs on a laptop in minutes."""

    limit_rows: int | None = Field(50_000, ge=1)
    """Rows read per raw file (becomes data.limit_rows)."""
    epochs: int | None = Field(2, ge=1)
    """Training epochs per stage (becomes train.epochs)."""

    def overrides(self) -> list[str]:
        out = []
        if self.limit_rows is not None:
            out.append(f"data.limit_rows={self.limit_rows}")
        if self.epochs is not None:
            out.append(f"train.epochs={self.epochs}")
        return out


class Profile(_Strict):
    name: str
    task: Literal["can", "kg"] = "can"
    """Workload: CAN intrusion detection (window graphs) or knowledge-graph embeddings."""
    data_root: str = "../shared/data"
    """Root that data.dataset resolves against; PIPELINE_DATA_ROOT overrides the file."""
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    safety_factor: float = 0.9
    """Fraction of device memory the planner may use, in (0, 1]."""
    executor: Literal["auto", "slurm", "local"] = "auto"
    stages: list[str] = Field(default_factory=lambda: ["preprocess", "teacher", "evaluate"])
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The GAT teacher."""
    student_model: ModelConfig = Field(default_factory=_small_student)
    """The GAT student (stages student and curriculum); at most 1/5 of the teacher's parameters."""
    vgae: VGAEConfig = Field(default_factory=VGAEConfig)
    """The VGAE autoencoder teacher (stage autoencoder)."""
    vgae_student: VGAEConfig = Field(default_factory=_small_vgae)
    """The small VGAE distilled from it (stage student)."""
    distill: DistillConfig = Field(default_factory=DistillConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    resources: dict[str, Resources] = Field(default_factory=dict)
    """'default' plus per-stage overrides."""
    dry_run: DryRunConfig = Field(default_factory=DryRunConfig)
    kg: KGConfig = Field(default_factory=KGConfig)
    """Knowledge-graph workload settings (task: kg)."""
    kg_model: KGModelConfig = Field(default_factory=KGModelConfig)
    """Knowledge-graph teacher and student encoders (task: kg)."""

    @field_validator("safety_factor")
    @classmethod
    def _safety_in_range(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"must be in (0, 1], got {value}")
        return value

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in KNOWN_STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; valid: {list(KNOWN_STAGES)}")
        return value

    @field_validator("resources")
    @classmethod
    def _known_resource_keys(cls, value: dict[str, Resources]) -> dict[str, Resources]:
        unknown = [k for k in value if k != "default" and k not in KNOWN_STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; valid: ['default', *{list(KNOWN_STAGES)}]")
        return value

    @model_validator(mode="after")
    def _stride_fits(self) -> "Profile":
        if self.data.stride is not None and self.data.stride > self.data.window:
            raise ValueError("data.stride must not exceed data.window (messages would be skipped)")
        return self

    @model_validator(mode="after")
    def _kg_fanouts_cover_layers(self) -> "Profile":
        layers = max(self.kg_model.teacher.layers, self.kg_model.student.layers)
        if self.task == "kg" and len(self.kg.fanouts) < layers:
            raise ValueError(f"kg.fanouts has {len(self.kg.fanouts)} hop(s) but kg_model uses {layers} layers: "
                             "give one fanout per layer")
        return self

    # -- derived paths -------------------------------------------------
    @property
    def dataset_path(self) -> Path:
        return _resolve(self.data.dataset, Path(self.data_root))

    @property
    def cache_path(self) -> Path:
        return _resolve(self.data.cache_dir, PROJECT_ROOT)

    @property
    def kg_path(self) -> Path:
        """The knowledge-graph edge file: kg.file inside data.dataset (or absolute)."""
        return _resolve(self.kg.file, self.dataset_path)

    @property
    def labels_path(self) -> Path | None:
        """The node-labels file: kg.labels_file inside data.dataset (or absolute); None without one."""
        return _resolve(self.kg.labels_file, self.dataset_path) if self.kg.labels_file else None

    def resources_for(self, stage: str) -> Resources:
        base = self.resources.get("default", Resources())
        return self.resources.get(stage, Resources()).over(base)

    def fingerprint_payload(self) -> dict[str, Any]:
        """What determines results: everything but where and with what resources it runs."""
        payload = self.model_dump(mode="json")
        for key in ("resources", "executor", "data_root", "name", "dry_run"):
            payload.pop(key, None)
        payload["data"].pop("cache_dir", None)
        return payload


def _resolve(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return (p if p.is_absolute() else base / p).resolve()


# -- loading ---------------------------------------------------------------

def profile_file(name_or_path: str | os.PathLike) -> Path:
    """A profile name (``set_01``) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate.resolve()
    named = PROFILES_DIR / f"{name_or_path}.yaml"
    if not named.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml") if p.stem != "defaults")
        raise ProfileError(f"no profile named {name_or_path!r} in {PROFILES_DIR}; known: {known}")
    return named


def load_profile(
    name_or_path: str | os.PathLike,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    with_defaults: bool = True,
    check_paths: bool = True,
) -> Profile:
    """Merge defaults.yaml, the profile, $PIPELINE_DATA_ROOT and ``key=value`` overrides; validate."""
    path = profile_file(name_or_path)
    layers: list[tuple[str, dict]] = []
    if with_defaults and DEFAULTS_FILE.exists() and path != DEFAULTS_FILE.resolve():
        layers.append((_display(DEFAULTS_FILE), _read_yaml(DEFAULTS_FILE)))
    layers.append((_display(path), _read_yaml(path)))
    env_root = os.environ.get(DATA_ROOT_ENV)
    if env_root:
        layers.append((f"${DATA_ROOT_ENV}", {"data_root": env_root}))
    for item in overrides:
        layers.append((f"-O {item}", parse_override(item)))

    merged: dict[str, Any] = {}
    sources: dict[tuple, str] = {}
    for source, layer in layers:
        _deep_merge(merged, layer, sources, source, ())
    merged.setdefault("name", path.stem)
    # Relative data roots are relative to the project, so jobs started elsewhere find the same data.
    if "data_root" in merged and isinstance(merged["data_root"], str):
        merged["data_root"] = str(_resolve(merged["data_root"], PROJECT_ROOT))

    try:
        profile = Profile.model_validate(merged)
    except ValidationError as exc:
        raise ProfileError(_explain(exc, sources, _display(path))) from None
    if check_paths and not profile.dataset_path.is_dir():
        src = sources.get(("data", "dataset"), _display(path))
        raise ProfileError(
            f"{src}: data.dataset: {profile.dataset_path} does not exist "
            f"(data_root={profile.data_root}; set ${DATA_ROOT_ENV} or -O data_root=/path/to/data)"
        )
    return profile


def parse_override(item: str) -> dict:
    """``train.epochs=3`` -> {"train": {"epochs": 3}}; values are parsed as YAML scalars."""
    if "=" not in item:
        raise ProfileError(f"-O {item}: expected key=value, e.g. -O train.epochs=3")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ProfileError(f"-O {item}: empty key")
    value = yaml.safe_load(raw) if raw != "" else None
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def dump_profile(profile: Profile) -> str:
    return yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{_display(path)}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProfileError(f"{_display(path)}: expected a mapping of keys at top level, got {type(data).__name__}")
    return data


def _deep_merge(into: dict, layer: dict, sources: dict, source: str, prefix: tuple) -> None:
    for key, value in layer.items():
        loc = prefix + (key,)
        # resources.<stage>.extra and similar free-form mappings merge too; lists replace.
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value, sources, source, loc)
        else:
            into[key] = copy.deepcopy(value)
            _mark(sources, loc, value, source)


def _mark(sources: dict, loc: tuple, value: Any, source: str) -> None:
    sources[loc] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(sources, loc + (k,), v, source)


def _explain(exc: ValidationError, sources: dict, default_source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        source = default_source
        for n in range(len(loc), 0, -1):
            if loc[:n] in sources:
                source = sources[loc[:n]]
                break
        key = ".".join(loc) or "<profile>"
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            valid = sorted(parent.model_fields) if parent else []
            msg = f"unknown key {loc[-1]!r}" + (f"; valid keys here: {valid}" if valid else "")
        else:
            got = err.get("input")
            text = err["msg"].removeprefix("Value error, ")
            msg = f"{text} (got {got!r})" if not isinstance(got, (dict, list)) and "got" not in text else text
        lines.append(f"{source}: {key}: {msg}")
    return "invalid profile:\n  " + "\n  ".join(lines)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The schema model that owns the mapping at ``loc`` (to list its valid keys)."""
    model: type[BaseModel] = Profile
    i = 0
    while i < len(loc):
        if model is Profile and loc[i] == "resources":
            if i + 1 >= len(loc):
                return None
            model, i = Resources, i + 2
            continue
        field = model.model_fields.get(loc[i])
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model, i = ann, i + 1
    return model


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
