"""The profile: its shared schema, layered loading (defaults < profile < environment < -O overrides)
and validation.

A profile's ``task`` picks its workload (``pipeline.stages``), and the workload its schema: the
sections here (devices, resources, ``train``, ``dry_run``, the shared keys of ``data`` and
``distill``) plus its own (``pipeline.can.config``, ``pipeline.kg.config``). Defaults are layered
as ``profiles/defaults/common.yaml``, then ``profiles/defaults/<task>.yaml``, then the profile.
Every error names the file (or override) that set the offending key, the dotted key, and the fix
(``pipeline.profile_layers`` reads, merges and explains the layers).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from pipeline.profile_layers import ProfileError, explain, merge_layer, parse_override, read_yaml
from pipeline.stages import WORKLOADS, resolve, workload

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = PROJECT_ROOT / "profiles"
DEFAULTS_DIR = PROFILES_DIR / "defaults"
DATA_ROOT_ENV = "PIPELINE_DATA_ROOT"
DEFAULT_TASK = "can"


class Section(BaseModel):
    """A profile section: unknown keys are errors, values are not coerced, and it never changes."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataConfig(Section):
    """Where a workload's input lives; each workload adds its own keys."""

    dataset: str
    """Dataset folder, relative to data_root unless absolute."""
    limit_rows: int | None = Field(None, ge=1)
    """Read at most this many rows per file (dry runs on a slice)."""
    cache_dir: str = "data/cache"
    """Where caches live, relative to the project root unless absolute; shared by runs."""


class DistillConfig(Section):
    """Knowledge distillation of a student from its teacher."""

    temperature: float = Field(4.0, gt=0)
    """Softmax temperature T of KL(teacher || student) on logits / T (the term is scaled by T^2)."""
    alpha: float = Field(0.7, ge=0, le=1)
    """Weight of the distillation term; the hard-label loss gets 1 - alpha (0 = no distillation)."""


class TrainConfig(Section):
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


class Resources(Section):
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
    collective_timeout_s: int | None = Field(None, ge=1)
    """Data-parallel stages: how long a rank waits for the others (rendezvous, every collective) before the
    stage fails naming the rank that stopped; None: 600 (``pipeline.distributed.DEFAULT_TIMEOUT_S``)."""
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


class DryRunConfig(Section):
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


class TrackingConfig(Section):
    """Where a finished run's records are imported for comparison (``make track``, the end of a chain).

    Jobs never write to the store themselves; the import runs after them, under a file lock. Nothing
    here changes a stage's result, so no stage reads it (no fingerprint hashes it)."""

    enabled: bool = True
    """False: a chain ends with its report only and nothing is written to a tracking store."""
    uri: str | None = None
    """MLflow tracking URI: a site's server (``http://mlflow.example.org:5000``) or ``sqlite:///path``;
    None: ``sqlite:///<runs root>/mlflow.db`` beside the run folders."""
    experiment: str | None = None
    """MLflow experiment the runs go in; None: the profile's task (``can`` or ``kg``)."""


class Profile(Section):
    """What every profile holds, whatever its task; a workload's profile class adds its sections."""

    name: str
    task: str = DEFAULT_TASK
    """Workload: ``can`` (CAN intrusion detection) or ``kg`` (knowledge-graph embeddings)."""
    data_root: str = "../shared/data"
    """Root that data.dataset resolves against; PIPELINE_DATA_ROOT overrides the file."""
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    safety_factor: float = 0.9
    """Fraction of device memory the planner may use, in (0, 1]."""
    executor: Literal["auto", "slurm", "local"] = "auto"
    stages: list[str] = Field(default_factory=lambda: ["preprocess", "teacher", "evaluate"])
    data: DataConfig
    distill: DistillConfig = Field(default_factory=DistillConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    resources: dict[str, Resources] = Field(default_factory=dict)
    """'default' plus per-stage overrides."""
    dry_run: DryRunConfig = Field(default_factory=DryRunConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("safety_factor")
    @classmethod
    def _safety_in_range(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"must be in (0, 1], got {value}")
        return value

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str], info: ValidationInfo) -> list[str]:
        valid = _stage_names(info)
        unknown = [s for s in value if s not in valid]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; valid: {valid}")
        return value

    @field_validator("resources")
    @classmethod
    def _known_resource_keys(cls, value: dict[str, Resources], info: ValidationInfo) -> dict[str, Resources]:
        valid = _stage_names(info)
        unknown = [k for k in value if k != "default" and k not in valid]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; valid: ['default', *{valid}]")
        return value

    # -- derived paths -------------------------------------------------
    @property
    def dataset_path(self) -> Path:
        return resolve_path(self.data.dataset, Path(self.data_root))

    @property
    def cache_path(self) -> Path:
        return resolve_path(self.data.cache_dir, PROJECT_ROOT)

    def resources_for(self, stage: str) -> Resources:
        base = self.resources.get("default", Resources())
        return self.resources.get(stage, Resources()).over(base)

    def plan_target(self, stage: str) -> tuple[str, float]:
        """The device a stage's batches are planned for (``make plan``): ``cuda`` with one GPU's
        memory when it gets GPUs, else ``cpu`` with its host memory, in GB."""
        res = self.resources_for(stage)
        device, key = ("cuda", "gpu_mem_gb") if res.gpus else ("cpu", "mem_gb")
        target_gb = getattr(res, key)
        if target_gb is None:
            raise ProfileError(f"profile {self.name}: resources.{stage}.{key} is not set; make plan needs the "
                               "memory of the device the stage will get")
        return device, target_gb

    def sections(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The values of the named sections (top-level keys or dotted sub-sections), as plain data.

        Where a stage's inputs live and what they are called never change its result: so
        ``data.cache_dir`` is left out of ``data``."""
        dumped = self.model_dump(mode="json")
        dumped["data"].pop("cache_dir", None)
        out: dict[str, Any] = {}
        for name in names:
            node: Any = dumped
            for part in name.split("."):
                node = node[part]
            out[name] = node
        return out


def _stage_names(info: ValidationInfo) -> list[str]:
    """The stages of the task being validated (``task`` is declared before the fields that ask)."""
    return workload(info.data.get("task", DEFAULT_TASK)).stage_names()


def profile_class(task: str) -> type[Profile]:
    """The schema of a ``task``'s profiles, as the workload registry names it."""
    return resolve(workload(task).profile)


def resolve_path(path: str, base: Path) -> Path:
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
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ProfileError(f"no profile named {name_or_path!r} in {PROFILES_DIR}; known: {known}")
    return named


def load_profile(
    name_or_path: str | os.PathLike,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    with_defaults: bool = True,
    check_paths: bool = True,
) -> Profile:
    """Merge the defaults of the profile's task, the profile, $PIPELINE_DATA_ROOT and ``key=value``
    overrides; validate against the task's schema."""
    path = profile_file(name_or_path)
    own: list[tuple[str, dict]] = [(_display(path), read_yaml(path, _display(path)))]
    env_root = os.environ.get(DATA_ROOT_ENV)
    if env_root:
        own.append((f"${DATA_ROOT_ENV}", {"data_root": env_root}))
    own += [(f"-O {item}", parse_override(item)) for item in overrides]
    task = _task_of(own)
    layers = [(_display(f), read_yaml(f, _display(f))) for f in default_files(task)] if with_defaults else []

    merged: dict[str, Any] = {}
    sources: dict[tuple, str] = {}
    for source, layer in layers + own:
        merge_layer(merged, layer, sources, source)
    merged.setdefault("name", path.stem)
    # Relative data roots are relative to the project, so jobs started elsewhere find the same data.
    if "data_root" in merged and isinstance(merged["data_root"], str):
        merged["data_root"] = str(resolve_path(merged["data_root"], PROJECT_ROOT))

    schema = profile_class(task)
    try:
        profile = schema.model_validate(merged)
    except ValidationError as exc:
        raise ProfileError(explain(exc, sources, _display(path), schema)) from None
    if check_paths and not profile.dataset_path.is_dir():
        src = sources.get(("data", "dataset"), _display(path))
        raise ProfileError(
            f"{src}: data.dataset: {profile.dataset_path} does not exist "
            f"(data_root={profile.data_root}; set ${DATA_ROOT_ENV} or -O data_root=/path/to/data)"
        )
    return profile


def default_files(task: str) -> list[Path]:
    """The defaults under a profile of ``task``: shared ones, then the task's own."""
    return [f for f in (DEFAULTS_DIR / "common.yaml", DEFAULTS_DIR / f"{task}.yaml") if f.exists()]


def _task_of(layers: list[tuple[str, dict]]) -> str:
    """The task the profile's own layers (file, environment, overrides) set, last one winning."""
    task, source = DEFAULT_TASK, None
    for name, layer in layers:
        if "task" in layer:
            task, source = layer["task"], name
    if not isinstance(task, str) or task not in WORKLOADS:
        raise ProfileError(f"{source}: task: unknown task {task!r}; valid: {sorted(WORKLOADS)}")
    return task


def dump_profile(profile: Profile) -> str:
    return yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
