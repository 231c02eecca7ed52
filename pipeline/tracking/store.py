"""The MLflow store runs are imported into, the lock that serialises imports, and the one write
operation: make an MLflow run hold exactly a :class:`RunSpec`.

Jobs never write here; ``track`` does, after them. Any number of imports may start at once (every
chain of a sweep finishing together): each takes an exclusive ``flock`` first, on a file beside the
SQLite database (``mlflow.db.lock``) or, for a server URI, beside the run folders, so only one
writes at a time and SQLite never sees two writers. The lock is also what makes "look up, then
create" safe: an MLflow run is found by its identity tag, never created twice.

Idempotent: an MLflow run carries the digest of what it was made from (``gnn.digest``, set last,
so a run cut short by a crash has none). Importing the same records again finds the same digest and
writes nothing. Records that changed (a resumed stage, a new epoch) replace the MLflow run whole:
the old one is deleted (MLflow keeps it as deleted until ``mlflow gc``) and a new one made, so a
metric history is never appended to twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pipeline import io
from pipeline.config import PROJECT_ROOT

DEFAULT_DB = "mlflow.db"
ARTIFACTS = "mlartifacts"
SERVER_LOCK = ".mlflow-track.lock"
KEY_TAG = "gnn.key"
"""The identity of an MLflow run: a digest of ``run:<profile>/<run_id>``, ``stage:...`` or ``sweep:...``."""
DIGEST_TAG = "gnn.digest"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM = 6000
MAX_TAG = 8000


@dataclass(frozen=True)
class Store:
    uri: str
    lock_path: Path
    artifact_root: Path | None
    """Where a local store's artifacts go (``<db folder>/mlartifacts/<experiment>``); None: the server's."""


def store_for(uri: str | None, runs_root: Path) -> Store:
    """The store of ``tracking.uri`` (None: ``sqlite:///<runs_root>/mlflow.db``); a relative SQLite
    path is taken from the project folder, wherever the command runs."""
    if uri is None or uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]) if uri else Path(runs_root) / DEFAULT_DB
        db = (db if db.is_absolute() else PROJECT_ROOT / db).resolve()
        return Store(f"sqlite:///{db}", db.with_name(db.name + ".lock"), db.parent / ARTIFACTS)
    return Store(uri, Path(runs_root).resolve() / SERVER_LOCK, None)


@contextlib.contextmanager
def locked(store: Store) -> Iterator[None]:
    """Hold the store's import lock (blocking until the import before this one is done)."""
    store.lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(store.lock_path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def client_for(store: Store):
    """An MlflowClient of the store (only ever called under the lock: the first client of a new
    SQLite file creates its tables)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # one line per run otherwise
    from mlflow.tracking import MlflowClient

    # mlflow sets its loggers up on import; its INFO lines (table creation, migrations) are noise here,
    # and so is SQLAlchemy's deprecation of a loader option mlflow's SQL store still uses.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*noload.*loader strategy is deprecated")
    return MlflowClient(tracking_uri=store.uri)


def experiment_id(client, store: Store, name: str) -> str:
    """The id of experiment ``name``, created (or restored from deleted) when needed."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        location = (store.artifact_root / name).as_uri() if store.artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # made meanwhile by an import on another machine (a server store)
            found = client.get_experiment_by_name(name)
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


@dataclass
class RunSpec:
    """Everything one MLflow run holds."""

    key: str
    name: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    """(key, value, step, timestamp in ms)."""
    artifacts: list[tuple[Path, str]] = field(default_factory=list)
    """(file, folder inside the run's artifacts; "" for the top)."""
    status: str = "FINISHED"
    start_ms: int | None = None
    end_ms: int | None = None

    @property
    def identity(self) -> str:
        return io.digest(self.key)

    @property
    def digest(self) -> str:
        files = {f"{folder}/{path.name}": io.file_sha256(path) for path, folder in self.artifacts}
        return io.digest({"key": self.key, "name": self.name, "params": self.params, "tags": self.tags,
                          "metrics": self.metrics, "artifacts": files, "status": self.status,
                          "start": self.start_ms, "end": self.end_ms})


def upsert(client, experiment: str, spec: RunSpec, parent: str | None = None) -> tuple[str, bool]:
    """Make one active MLflow run of ``experiment`` hold ``spec``, under ``parent``; returns its id
    and whether it was (re)made. Call under :func:`locked`."""
    found = client.search_runs([experiment], filter_string=f"tags.`{KEY_TAG}` = '{spec.identity}'", max_results=100)
    digest = spec.digest
    keep = next((r for r in found if r.data.tags.get(DIGEST_TAG) == digest), None)
    for run in found:
        if run is not keep:
            client.delete_run(run.info.run_id)
    if keep is None:
        return _create(client, experiment, spec, digest, parent), True
    run_id = keep.info.run_id
    if parent is not None and keep.data.tags.get(PARENT_TAG) != parent:
        client.set_tag(run_id, PARENT_TAG, parent)  # the parent was remade; the run itself is unchanged
    return run_id, False


def _create(client, experiment: str, spec: RunSpec, digest: str, parent: str | None) -> str:
    from mlflow.entities import Metric, Param, RunTag

    tags = {**spec.tags, KEY_TAG: spec.identity, "mlflow.runName": spec.name}
    if parent:
        tags[PARENT_TAG] = parent
    run_id = client.create_run(experiment, start_time=spec.start_ms, tags=tags, run_name=spec.name).info.run_id
    params = [Param(k, v[:MAX_PARAM]) for k, v in spec.params.items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params[i:i + 100])
    metrics = [Metric(k, float(v), ts, step) for k, v, step, ts in spec.metrics]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    for path, folder in spec.artifacts:
        client.log_artifact(run_id, str(path), artifact_path=folder or None)
    client.set_terminated(run_id, status=spec.status, end_time=spec.end_ms)
    client.log_batch(run_id, tags=[RunTag(DIGEST_TAG, digest)])  # last: a run cut short has no digest
    return run_id


def clip_tag(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_TAG else text[:MAX_TAG - 3] + "..."
