"""Run directories: the frozen profile, one folder per stage, done markers and stage status.

Layout::

    runs/<profile>/<run_id>/
        profile.yaml            frozen, fully merged profile every job reads
        jobs.json               written by the launch layer (job ids per stage)
        <stage>/status.json     state, host, job id, start/end, peak memory, error, log
        <stage>/done.json       fingerprint of the inputs the stage finished with
        <stage>/checkpoint.pt   last epoch (training stages)
        <stage>/log             the stage's own log
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.config import PROJECT_ROOT, Profile, dump_profile, load_profile
from pipeline.errors import MissingFileError
from pipeline.stages import stage_spec

RUNS_DIR = PROJECT_ROOT / "runs"


def new_run_id() -> str:
    """A run's folder name: when it was created, and four random hex digits for runs created in the same second."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).resolve()

    # -- creation ------------------------------------------------------
    @classmethod
    def create(cls, profile: Profile, root: str | os.PathLike | None = None, run_id: str | None = None) -> "RunDir":
        run_id = run_id or new_run_id()
        run = cls(Path(root or RUNS_DIR) / profile.name / run_id)
        run.path.mkdir(parents=True, exist_ok=True)
        run.freeze(profile)
        return run

    def freeze(self, profile: Profile) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        io.write_text(self.profile_path, dump_profile(profile))

    # -- paths ---------------------------------------------------------
    @property
    def profile_path(self) -> Path:
        return self.path / "profile.yaml"

    @property
    def jobs_path(self) -> Path:
        return self.path / "jobs.json"

    def stage_dir(self, stage: str) -> Path:
        d = self.path / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def profile(self, overrides: list[str] | tuple[str, ...] = ()) -> Profile:
        if not self.profile_path.exists():
            raise MissingFileError(f"{self.path} is not a run directory (no profile.yaml)")
        return load_profile(self.profile_path, overrides, with_defaults=False, check_paths=False)

    # -- done markers ----------------------------------------------------
    def done_record(self, stage: str) -> dict[str, Any] | None:
        path = self.path / stage / "done.json"
        return io.read_json(path) if path.exists() else None

    def is_done(self, stage: str, fingerprint: str) -> bool:
        record = self.done_record(stage)
        return record is not None and record.get("fingerprint") == fingerprint

    def mark_done(self, stage: str, fingerprint: str, summary: dict[str, Any]) -> None:
        io.write_json(self.stage_dir(stage) / "done.json", {"fingerprint": fingerprint, **summary})

    def clear_done(self, stage: str) -> None:
        (self.path / stage / "done.json").unlink(missing_ok=True)

    # -- status ----------------------------------------------------------
    def read_status(self, stage: str) -> dict[str, Any]:
        path = self.path / stage / "status.json"
        return io.read_json(path) if path.exists() else {}

    def write_status(self, stage: str, **fields: Any) -> dict[str, Any]:
        status = {**self.read_status(stage), **fields, "host": socket.gethostname()}
        io.write_json(self.stage_dir(stage) / "status.json", status)
        return status

    def read_jobs(self) -> dict[str, Any]:
        return io.read_json(self.jobs_path) if self.jobs_path.exists() else {}


def stage_fingerprint(profile: Profile, stage: str, upstream: dict[str, str]) -> str:
    """Hash of what a stage's result depends on: the profile sections it reads (never resources,
    names or paths) and the results of the stages it reads."""
    spec = stage_spec(profile.task, stage)
    payload = {"task": profile.task, "stage": stage, "reads": profile.sections(spec.reads), "upstream": upstream}
    return io.digest(payload)
