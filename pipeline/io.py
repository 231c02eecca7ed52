"""The one place that writes files: always to a temporary sibling, then an atomic rename.

A job killed mid-write (timeout, preemption, OOM) therefore never leaves half a file
where a reader would take it for a whole one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create owner-only entries; results on shared cluster storage must be
    # readable by the group like any other file the user writes, so apply the umask instead.
    tmp.chmod((0o777 if is_dir else 0o666) & ~_umask())
    try:
        yield tmp
        if is_dir and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


MANIFEST = "manifest.json"


def keyed_manifest(folder: str | os.PathLike, key: str) -> dict[str, Any] | None:
    """The manifest of a cache folder if it is complete and was built for ``key``, else None."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    return manifest if manifest.get("key") == key else None


def publish_keyed_dir(folder: str | os.PathLike, key: str,
                      build: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Build a cache folder in a temporary sibling, write its manifest last, and rename it into place.

    Returns (manifest, built here). If another job (another seed of a sweep) finished the same
    folder meanwhile, its copy is kept and returned: replacing a cache that a running job may be
    reading would pull files from under it.
    """
    class _BuiltElsewhere(Exception):
        pass

    try:
        with atomic_path(folder, is_dir=True) as tmp:
            manifest = build(tmp)
            write_json(tmp / MANIFEST, manifest)
            if keyed_manifest(folder, key) is not None:
                raise _BuiltElsewhere
    except _BuiltElsewhere:
        return keyed_manifest(folder, key) or {}, False
    return manifest, True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        _fsync(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one record; a line is written with a single write call so a crash loses at most it."""
    with open(path, "a") as fh:
        fh.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
        fh.flush()


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        _fsync(tmp)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def digest(payload: Any) -> str:
    """A short content key of JSON-able ``payload`` (key order does not matter): 16 hex digits of sha256."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, read in chunks (files may be larger than memory)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            hasher.update(block)
    return hasher.hexdigest()
