"""<run>/jobs.json: which job ran each stage, where its logs are, what it asked for.

Layout::

    {"executor": "slurm" | "local",      how the run was launched (resume uses the same)
     "profile": "<name>",
     "stages": {stage: record},           newest record per stage
     "history": [record, ...]}            every record ever written, oldest first

A record: ``stage, job_id, action (submit|dry-run|resume), submitted (ISO time), stdout,
stderr, depends_on, resources (as requested), params (as given to submitit), git_commit (of the
code that launched it)``. Resume appends;
no job id is ever dropped. The file is rewritten whole through ``pipeline.io`` (atomic).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from pipeline import io
from pipeline.runs import RunDir

EXECUTORS = ("slurm", "local")


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def append_records(run: RunDir, executor: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Add ``records`` to the run's jobs.json (creating it), keeping all earlier ones."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    data = run.read_jobs() or {}
    data.setdefault("executor", executor)
    data.setdefault("profile", run.path.parent.name)
    data.setdefault("stages", {})
    data.setdefault("history", [])
    for record in records:
        data["stages"][record["stage"]] = record
        data["history"].append(record)
    io.write_json(run.jobs_path, data)
    return data


def latest_records(run: RunDir) -> dict[str, dict[str, Any]]:
    """Newest record per stage ({} for a run never launched through jobs/)."""
    return dict((run.read_jobs() or {}).get("stages", {}))


def launched_with(run: RunDir) -> str | None:
    """'slurm' or 'local' as recorded at launch; None if jobs.json is missing."""
    return (run.read_jobs() or {}).get("executor")
