"""Warnings a stage leaves for ``make status``: results were produced, but something deserves a look.

A stage (or the training loop inside it) records each warning once under a key in
``warnings.json`` of its own folder (a training stage with several models has one per model
folder); ``jobs.status`` lists every such file under a stage's folder below the stage table. A
stage that starts afresh clears its file first, so a warning never outlives the run that raised it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline import io

WARNINGS = "warnings.json"


def record_warning(directory: str | os.PathLike, key: str, message: str, profile_key: str | None = None) -> bool:
    """Add ``message`` under ``key`` to ``directory/warnings.json``; False if that key is already there
    (the caller then does not log it again: a warning is raised once per run, not once per epoch)."""
    path = Path(directory) / WARNINGS
    recorded = _read(path)
    if key in recorded:
        return False
    recorded[key] = {"message": message, **({"profile_key": profile_key} if profile_key else {})}
    io.write_json(path, recorded)
    return True


def clear_warnings(directory: str | os.PathLike) -> None:
    (Path(directory) / WARNINGS).unlink(missing_ok=True)


def stage_warnings(stage_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every warning recorded under ``stage_dir`` (its own file and its model folders'), in path order,
    each with ``where``: the folder relative to ``stage_dir`` ('' for the stage itself)."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return []
    found = []
    for path in sorted(stage_dir.rglob(WARNINGS)):
        where = path.parent.relative_to(stage_dir).as_posix()
        found += [{"where": "" if where == "." else where, "key": key, **entry}
                  for key, entry in _read(path).items()]
    return found


def _read(path: Path) -> dict[str, Any]:
    try:
        data = io.read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
