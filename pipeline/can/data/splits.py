"""Which raw files make which split, without leakage between them.

* Train files live in folders matching ``train_glob``; every folder matching ``test_glob`` is one
  test scenario, named after the folder and scored on its own.
* Identical captures are read once: upstream datasets ship the same capture in several folders,
  and reading it twice would put the same windows in train and validation (or test). Identity is
  judged on the decompressed content, because the same capture gzipped twice differs in its header
  bytes (the set_01 copies do); the later file is recorded as ``duplicate_of`` the first.
* With ``data.val_files`` (a glob over train files' paths), validation is the train files it
  matches, whole, and training the others, whole: a held-out vehicle or attack for validation.
* Otherwise validation is a time-contiguous block of each train file, never randomly drawn windows, because
  neighbouring windows of a capture are nearly identical and a random split would leak. An
  attack-free file gives its tail; a file with attacks gives the block nearest its tail that holds
  its share of attack windows and leaves training its own (see ``choose_validation``), so
  validation can judge a classifier even when a capture's attacks stop before its end.
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.can.data.windows import num_windows
from pipeline.errors import InputError

SPLIT_VERSION = 2
"""Bump when the rule that picks validation rows changes: it is part of the cache key."""

RAW_SUFFIXES = (".csv", ".gz", ".txt", ".log", ".parquet")
"""File endings taken as raw logs; anything else in a split folder (README, notes) is ignored."""


class SplitError(InputError):
    """The dataset folder does not hold the train and test folders the profile asks for."""


@dataclass
class SourceFile:
    path: Path
    """Absolute path."""
    rel: str
    """Path relative to the dataset folder, as recorded in the manifest."""
    role: str
    """'train' or 'test'."""
    scenario: str | None
    """Test folder name; None for train files."""
    sha256: str
    """Of the file's bytes; part of the cache key."""
    duplicate_of: str | None = None
    """``rel`` of an earlier file with identical (decompressed) content; such a file is not read."""

    def manifest_entry(self, rows: int = 0, bad_rows: int = 0, padded_rows: int = 0) -> dict:
        return {"path": self.rel, "sha256": self.sha256, "role": self.role, "scenario": self.scenario,
                "rows": rows, "bad_rows": bad_rows, "padded_rows": padded_rows, "duplicate_of": self.duplicate_of}


def discover_sources(dataset: Path, train_glob: str = "train_*", test_glob: str = "test_*") -> list[SourceFile]:
    """Train files (sorted) then test files (sorted by scenario), with content hashes and duplicates marked."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise SplitError(f"dataset folder {dataset} does not exist")
    train_dirs = _folders(dataset, train_glob)
    test_dirs = _folders(dataset, test_glob)
    train = [(p, "train", None) for d in train_dirs for p in _raw_files(d)]
    if not train:
        raise SplitError(f"no train files in {dataset}: no raw log (*{', *'.join(RAW_SUFFIXES)}) in folders "
                         f"matching train_glob={train_glob!r} (found folders: {[d.name for d in train_dirs]})")
    test = [(p, "test", d.name) for d in test_dirs for p in _raw_files(d)]
    if not test:
        raise SplitError(f"no test scenarios in {dataset}: no raw log in folders matching "
                         f"test_glob={test_glob!r} (found folders: {[d.name for d in test_dirs]})")
    sources: list[SourceFile] = []
    first_of: dict[str, str] = {}
    by_content: dict[tuple[int, int], list[tuple[SourceFile, str | None]]] = {}
    content_sha: dict[Path, str] = {}
    for path, role, scenario in train + test:
        digest, content, stream = _fingerprint(path)
        src = SourceFile(path.resolve(), path.relative_to(dataset).as_posix(), role, scenario, digest)
        src.duplicate_of = first_of.get(digest) or _same_content(src, stream, by_content.get(content, []), content_sha)
        sources.append(src)
        first_of.setdefault(digest, src.duplicate_of or src.rel)
        by_content.setdefault(content, []).append((src, stream))
    return sources


def file_sha256(path: Path) -> str:
    return _fingerprint(path)[0]


def _fingerprint(path: Path, chunk: int = 1 << 20) -> tuple[str, tuple[int, int], str | None]:
    """sha256 of the file's bytes; (crc32, size mod 2**32) of its decompressed content; for gzip,
    sha256 of the compressed stream without its header.

    Gzip stores the CRC32 and length of its content in the last 8 bytes, so two compressions of
    the same capture, which differ only in header fields such as the timestamp, match on content
    without decompressing either; equal compressed streams then prove equal content. A plain file
    gets its fingerprint from its bytes, so it also matches a gzipped copy of itself.
    """
    digest, stream = hashlib.sha256(), hashlib.sha256()
    crc, size, header = 0, 0, -1
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            if header < 0:
                header = _gzip_header_length(block)
            digest.update(block)
            if header > 0:
                stream.update(block[header:] if size == 0 else block)
            else:
                crc = zlib.crc32(block, crc)
            size += len(block)
        if header > 0 and size >= header + 8:
            fh.seek(-8, 2)
            crc, isize = struct.unpack("<II", fh.read(8))
            return digest.hexdigest(), (crc, isize), stream.hexdigest()
    return digest.hexdigest(), (crc, size & 0xFFFFFFFF), None


def _gzip_header_length(head: bytes) -> int:
    """Length of the gzip member header at the start of ``head``; 0 if it is not gzip."""
    if head[:3] != b"\x1f\x8b\x08" or len(head) < 10:
        return 0
    flags, pos = head[3], 10
    if flags & 4:  # FEXTRA
        pos += 2 + int.from_bytes(head[pos:pos + 2], "little")
    for flag in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & flag:
            end = head.find(b"\0", pos)
            if end < 0:
                return 0
            pos = end + 1
    if flags & 2:  # FHCRC
        pos += 2
    return pos if pos < len(head) else 0


def _same_content(src: SourceFile, stream: str | None, candidates: list[tuple[SourceFile, str | None]],
                  cache: dict[Path, str]) -> str | None:
    """The first earlier file whose decompressed content equals ``src``'s, if any.

    Candidates share the content CRC and size; equal compressed streams settle it at once,
    otherwise both are decompressed and their sha256 compared.
    """
    for other, other_stream in candidates:
        same = (stream is not None and stream == other_stream) or \
            _content_sha256(src.path, cache) == _content_sha256(other.path, cache)
        if same:
            return other.duplicate_of or other.rel
    return None


def _content_sha256(path: Path, cache: dict[Path, str], chunk: int = 1 << 20) -> str:
    if path not in cache:
        digest = hashlib.sha256()
        with open(path, "rb") as raw:
            opener = gzip.open if raw.read(2) == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
        cache[path] = digest.hexdigest()
    return cache[path]


def train_val_rows(rows: int, window: int, stride: int, val_fraction: float) -> tuple[slice, slice]:
    """Row ranges of one train file: the head for training, the time-contiguous tail for validation.

    The tail holds about ``val_fraction`` of the file's windows. It starts where the last train
    window ends, so with overlapping windows (stride < window) no message is in both splits; the
    few windows that would straddle the boundary are dropped. A file with fewer than two windows
    goes entirely to training.
    """
    total = num_windows(rows, window, stride)
    if total < 2:
        return slice(0, rows), slice(rows, rows)
    n_val = _validation_windows(total, val_fraction)
    split = (total - n_val - 1) * stride + window
    return slice(0, split), slice(split, rows)


@dataclass(frozen=True)
class ValidationBlock:
    """Where one train file's validation rows lie, and the row ranges trained on around them."""

    train: tuple[slice, ...]
    """Row ranges for training, each windowed on its own so that no window spans the validation block."""
    val: slice
    rule: str
    """Why these rows, for the manifest and the log (see ``choose_validation``)."""

    def manifest_entry(self) -> dict[str, Any]:
        return {"rule": self.rule, "val_rows": [self.val.start, self.val.stop],
                "train_rows": [[s.start, s.stop] for s in self.train if s.stop > s.start]}


def held_out_validation(rows: int, held_out: bool) -> ValidationBlock:
    """With ``data.val_files``: a train file it matches is validation whole, any other is train whole,
    so validation can hold a vehicle (or an attack) that training never sees."""
    if held_out:
        return ValidationBlock((slice(0, 0),), slice(0, rows), "whole file: held out by data.val_files")
    return ValidationBlock((slice(0, rows),), slice(rows, rows), "all train: validation is data.val_files")


def held_out_files(sources: list[SourceFile], pattern: str | None) -> set[str]:
    """``rel`` of the train files that ``data.val_files`` holds out (none without a pattern); an error
    naming the key when it matches no train file, or every one (nothing would be left to train on)."""
    if pattern is None:
        return set()
    train = [s.rel for s in sources if s.role == "train" and not s.duplicate_of]
    held = {rel for rel in train if fnmatch.fnmatchcase(rel, pattern)}
    if not held or held == set(train):
        which = "no" if not held else "every"
        raise SplitError(f"data.val_files={pattern!r} matches {which} train file ({', '.join(train)}); "
                         "give a pattern that holds out some of them, or drop the key")
    return held


def choose_validation(labels: np.ndarray, window: int, stride: int, val_fraction: float) -> ValidationBlock:
    """The validation block of one train file, from its per-message labels alone.

    The block holds ``n_val = round(val_fraction * windows)`` consecutive windows of the file's
    window grid (as ``train_val_rows`` counts them). A file without attack windows keeps the tail
    (``train_val_rows``). A file with attacks gets the block nearest its tail in which validation
    holds at least half its proportional share of the file's attack windows (``n_val / windows`` of
    them) and the rest of the file at least half of its own share, so both sides see attacks. When
    no block leaves training its half share (attacks in one or two windows), the block nearest the
    tail that gives validation its half share is taken: one always exists, because at most
    ``ceil(windows / n_val)`` blocks cover every window, so the best of them holds at least
    ``attacks / ceil(windows / n_val) >= attacks * n_val / (2 * windows)``. The attack count of every
    candidate block comes from one cumulative sum over window labels: a few vectorised passes
    whatever the file's length, no loop over positions.

    Training is the rows before and after the block, windowed separately. Validation keeps its
    ``n_val`` windows; the train windows that would straddle a block edge (only when stride <
    window) are dropped, so no message is in a train window and a validation window. The choice
    depends on this file's labels only (never on test files) and is deterministic.
    """
    rows = int(labels.shape[0])
    attacks = window_labels(labels, window, stride)
    total = int(attacks.shape[0])
    attack_windows = int(attacks.sum())
    if total < 2 or attack_windows == 0:
        head, tail = train_val_rows(rows, window, stride, val_fraction)
        rule = "all train: under two windows" if total < 2 else "tail: no attack windows"
        return ValidationBlock((head,), tail, rule)
    n_val = _validation_windows(total, val_fraction)
    running = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(attacks, out=running[1:])
    in_block = running[n_val:] - running[:-n_val]  # attack windows of the block starting at window j
    # Half the proportional share, in integers: in_block / n_val >= attack_windows / (2 * total), and
    # likewise for the windows outside the block.
    val_share = 2 * total * in_block >= n_val * attack_windows
    train_share = 2 * total * (attack_windows - in_block) >= (total - n_val) * attack_windows
    both = val_share & train_share
    first = int(np.flatnonzero(both if both.any() else val_share)[-1])
    at_tail = first + n_val == total
    start, stop = first * stride, rows if at_tail else (first + n_val - 1) * stride + window
    place = "tail" if at_tail else "middle block"
    held = "both parts hold half their attack share" if both.any() else "validation holds half its attack share"
    return ValidationBlock((slice(0, start), slice(stop, rows)), slice(start, stop), f"{place}: {held}")


def window_labels(labels: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Per window of the file's grid (starts 0, stride, ...): does it hold an attack message."""
    total = num_windows(int(labels.shape[0]), window, stride)
    running = np.zeros(labels.shape[0] + 1, dtype=np.int64)
    np.cumsum(labels != 0, out=running[1:])
    starts = np.arange(total, dtype=np.int64) * stride
    return running[starts + window] > running[starts]


def _validation_windows(total: int, val_fraction: float) -> int:
    return min(max(1, round(total * val_fraction)), total - 1)


def _folders(dataset: Path, pattern: str) -> list[Path]:
    return sorted(p for p in dataset.glob(pattern) if p.is_dir())


def _raw_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(RAW_SUFFIXES))
