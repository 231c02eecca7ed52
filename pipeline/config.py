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

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = PROJECT_ROOT / "profiles"
DEFAULTS_FILE = PROFILES_DIR / "defaults.yaml"
DATA_ROOT_ENV = "PIPELINE_DATA_ROOT"
KNOWN_STAGES = ("preprocess", "autoencoder", "teacher", "student", "curriculum", "export", "evaluate")


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the source file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


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
    train: TrainConfig = Field(default_factory=TrainConfig)
    resources: dict[str, Resources] = Field(default_factory=dict)
    """'default' plus per-stage overrides."""
    dry_run: DryRunConfig = Field(default_factory=DryRunConfig)

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

    # -- derived paths -------------------------------------------------
    @property
    def dataset_path(self) -> Path:
        return _resolve(self.data.dataset, Path(self.data_root))

    @property
    def cache_path(self) -> Path:
        return _resolve(self.data.cache_dir, PROJECT_ROOT)

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
