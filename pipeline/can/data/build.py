"""Raw CAN logs -> window graphs cached per split, keyed by inputs and parameters (the preprocess stage).

The cache lives in ``<data.cache_dir>/<key>/`` where the key hashes the content of every source
file and every parameter that changes the graphs, so runs share a cache and the same inputs make
this stage a no-op. It is built in a temporary folder and renamed into place in one step: a job
killed halfway never leaves a cache that looks complete.

Each file is windowed as soon as it is parsed (keeping raw CAN ids) and its columns are dropped, so
memory holds the graphs plus the columns of at most ``PREFETCH + 1`` files, never the whole
dataset. The vocabulary, fit on the train part of the train files only, is applied when a split is
written.

Validation is a time-contiguous block of each train file, chosen from that file's labels
(``pipeline.can.data.splits.choose_validation``); the manifest records each file's block and attack
windows, and every split's label histogram is logged.
"""
from __future__ import annotations

import logging
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline import io
from pipeline.can.config import CanDataConfig, CanProfile
from pipeline.can.data.capture import CaptureStats, capture_stats, node_feature_names, relative_to_capture
from pipeline.can.data.cache import save_split
from pipeline.can.data.readers import READER_VERSION, CanLog, RawCanLog, load_can_log
from pipeline.can.data.splits import (
    SPLIT_VERSION,
    SourceFile,
    ValidationBlock,
    choose_validation,
    discover_sources,
    held_out_files,
    held_out_validation,
)
from pipeline.can.data.windows import (
    EDGE_FEATURES,
    FEATURE_VERSION,
    build_graphs_raw,
    concat_graphs,
    empty_graphs,
    fit_vocab,
    with_vocab,
)
from pipeline.stage_warnings import record_warning

PREFETCH = 2
"""Files tokenized ahead of the one being windowed, so the tokenizers rarely wait (bounds memory)."""


LOADERS = 2
"""Files tokenized at once (each tokenizer is single-threaded, to know the line of a malformed row)."""


WRITERS = 2
"""Splits assembled and written at once (the big train split does not hold up the others)."""


def preprocess(profile: CanProfile, log: logging.Logger) -> dict[str, Any]:
    """Build (or find) the graph cache for ``profile``; returns the stage summary."""
    data = profile.data
    sources = discover_sources(profile.dataset_path, data.train_glob, data.test_glob)
    params = preprocess_params(data)
    key = cache_key(sources, params)
    cache_dir = profile.cache_path / key
    existing = io.keyed_manifest(cache_dir, key)
    if existing is not None:
        log.info("graph cache %s is up to date (key %s); nothing to do", cache_dir, key)
        return summary(cache_dir, existing)
    for src in sources:
        if src.duplicate_of:
            log.info("%s has the same content as %s: read once", src.rel, src.duplicate_of)
    manifest, built = io.publish_keyed_dir(cache_dir, key, lambda tmp: build_cache(sources, data, params, key, tmp, log))
    if not built:
        log.info("another job wrote graph cache %s meanwhile; using it", cache_dir)
        return summary(cache_dir, manifest)
    log.info("graph cache written to %s: %s", cache_dir,
             ", ".join(f"{name} {s['graphs']} graphs" for name, s in manifest["splits"].items()))
    return summary(cache_dir, manifest)


def preprocess_params(data: CanDataConfig) -> dict[str, Any]:
    """Every setting that changes the cached graphs (and so belongs in the cache key)."""
    return {"layout": data.layout, "window": data.window, "stride": data.stride or data.window,
            "val_fraction": data.val_fraction, "limit_rows": data.limit_rows, "bad_rows": data.bad_rows,
            "columns": data.columns.mapping(), "val_files": data.val_files, "id_agnostic": data.id_agnostic,
            "feature_version": FEATURE_VERSION, "reader_version": READER_VERSION}


def cache_key(sources: list[SourceFile], params: dict[str, Any]) -> str:
    payload = {"params": params, "split_version": SPLIT_VERSION,
               "sources": [[s.rel, s.role, s.scenario, s.sha256] for s in sources]}
    return io.digest(payload)


def summary(cache_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    return {"cache_dir": str(Path(cache_dir).resolve()), "result_key": manifest["key"],
            "graphs": {name: s["graphs"] for name, s in manifest["splits"].items()},
            "labels": {name: s["labels"] for name, s in manifest["splits"].items()}}


def warn_if_validation_has_no_attacks(labels: dict[str, dict[str, int]], stage_dir: Path, log: logging.Logger,
                                      val_files: str | None = None) -> None:
    """A validation split without attack windows cannot select a classifier's epochs (its F1 is 0
    whatever the model does): say so in the log and in ``make status``, with the key to change."""
    val, train = labels["val"], labels["train"]
    if val["1"] > 0:
        return
    if val_files is not None:
        key, fix = "data.val_files", f"make data.val_files (now {val_files!r}) hold out a train file with attacks"
    elif train["1"] > 0:
        key, fix = "data.val_fraction", "raise data.val_fraction"
    else:
        key, fix = "data.train_glob", "add train files with attacks (data.train_glob), then check data.val_fraction"
    message = (f"validation holds no attack windows ({val['0']} windows, all normal; train: {train['1']} attack "
               f"windows): epochs cannot be selected on attack F1 or AUROC; {fix}")
    if record_warning(stage_dir, "validation_without_attacks", message, key):
        log.warning(message)


def build_cache(sources: list[SourceFile], data: CanDataConfig, params: dict[str, Any], key: str, out: Path,
                log: logging.Logger) -> dict[str, Any]:
    """Parse, window and write every split into ``out``; returns the manifest.

    Train files come first (the vocabulary needs them), then each scenario's; see
    ``processing_order``. The next files are tokenized on a helper thread while the current one is
    decoded and windowed, and each finished split is assembled and written on other threads, so file
    reading, computing and writing overlap; at most ``PREFETCH + 1`` files' columns are in memory at
    once. Splits list their graphs in discovery order whatever the processing order.
    """
    window = params["window"]
    splits: dict[str, Future] = {}
    scenarios = sorted({s.scenario for s in sources if s.role == "test"})
    group_of = {i: ("train" if s.role == "train" else s.scenario) for i, s in enumerate(sources)}
    to_read = processing_order(sources)
    gathered = _Gathered(sources, window, params["stride"], data.val_fraction, data.id_agnostic,
                         held_out_files(sources, data.val_files), log)
    vocab: np.ndarray | None = None
    node_features = node_feature_names(data.id_agnostic)

    with ThreadPoolExecutor(LOADERS, thread_name_prefix="preprocess-read") as reader, \
            ThreadPoolExecutor(WRITERS, thread_name_prefix="preprocess-write") as writer:
        def finish(names: tuple[str, ...]) -> None:
            for name in names:
                parts = gathered.take(name)
                if name == "train" and sum(len(p["y"]) for _, p in parts) == 0:
                    raise ValueError(f"no train windows: every train file is shorter than one window of {window} rows")
                splits[name] = writer.submit(_write_split, name, parts, vocab, window, len(node_features), out, log)

        def load(index: int) -> RawCanLog:
            return load_can_log(sources[index].path, data.layout, data.limit_rows, data.bad_rows,
                                data.columns.mapping())

        progress = tqdm(total=len(sources), desc="preprocess", unit="file", file=sys.stderr,
                        mininterval=0.1 if sys.stderr.isatty() else 30.0)
        progress.update(len(sources) - len(to_read))
        pending = deque(reader.submit(load, i) for i in to_read[:PREFETCH])
        for k, index in enumerate(to_read):
            can = pending.popleft().result().decode()
            if k + PREFETCH < len(to_read):
                pending.append(reader.submit(load, to_read[k + PREFETCH]))
            gathered.add(index, can)
            del can
            progress.set_postfix_str(sources[index].rel, refresh=False)
            progress.update(1)
            nxt = group_of[to_read[k + 1]] if k + 1 < len(to_read) else None
            if group_of[index] == "train" and nxt != "train":
                vocab = fit_vocab(gathered.vocab_ids)
                finish(("train", "val"))
            elif group_of[index] != "train" and nxt != group_of[index]:
                finish((group_of[index],))
        progress.close()
        if vocab is None:
            raise ValueError("no train file could be read (all duplicates?)")
        finish(tuple(name for name in scenarios if name not in splits))
        written = {name: splits[name].result() for name in ("train", "val", *scenarios)}
    return {"key": key, "params": params, "sources": gathered.entries, "vocab": [int(v) for v in vocab],
            "node_features": list(node_features), "edge_features": list(EDGE_FEATURES), "splits": written,
            "split_version": SPLIT_VERSION, "scenarios": scenarios,
            "bad_rows_total": int(sum(e["bad_rows"] for e in gathered.entries))}


class _Gathered:
    """What ``build_cache`` collects file by file: each split's window graphs (tagged with their
    file's index), the manifest entry of every file, and the CAN ids of the train windows (none when
    the models are to be id-agnostic: the vocabulary stays empty)."""

    def __init__(self, sources: list[SourceFile], window: int, stride: int, val_fraction: float,
                 id_agnostic: bool, held_out: set[str], log: logging.Logger):
        self.sources, self.window, self.stride, self.val_fraction, self.log = sources, window, stride, val_fraction, log
        self.id_agnostic, self.held_out = id_agnostic, held_out
        self.entries = [s.manifest_entry() for s in sources]
        self.parts: dict[str, list[tuple[int, dict[str, torch.Tensor]]]] = {}
        self.vocab_ids: list[np.ndarray] = []

    def add(self, index: int, can: CanLog) -> None:
        """Window one parsed file into its split(s) and record it in the manifest."""
        src, entry = self.sources[index], self.entries[index]
        entry.update(rows=len(can), bad_rows=can.bad_rows, padded_rows=can.padded_rows)
        stats = capture_stats(can) if self.id_agnostic else None
        if src.role == "train":
            block = (held_out_validation(len(can), src.rel in self.held_out) if self.held_out
                     else choose_validation(can.label, self.window, self.stride, self.val_fraction))
            train, val = window_train_file(can, self.window, self.stride, block, index)
            if not self.id_agnostic:
                self.vocab_ids.extend(np.unique(can.can_id[rows]) for rows in block.train)
            self.parts.setdefault("train", []).append((index, self._node_view(train, stats)))
            self.parts.setdefault("val", []).append((index, self._node_view(val, stats)))
            entry["validation"] = validation_record(block, train, val)
            self.log.info("%s: %d rows (%d bad), %s", src.rel, len(can), can.bad_rows,
                          describe_validation(entry["validation"]))
        else:
            graphs = build_graphs_raw(can, self.window, self.stride, source=index)
            self.parts.setdefault(src.scenario, []).append((index, self._node_view(graphs, stats)))
            self.log.info("%s: %d rows (%d bad), %d windows [%s]", src.rel, len(can), can.bad_rows,
                          len(graphs["y"]), src.scenario)

    def _node_view(self, graphs: dict[str, torch.Tensor], stats: CaptureStats | None) -> dict[str, torch.Tensor]:
        """Window graphs as the models will see them: as built, or (given their capture's
        statistics) relative to their own capture."""
        return graphs if stats is None else relative_to_capture(graphs, stats, self.window)

    def take(self, name: str) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """A finished split's graphs, handed over (and forgotten here, so they can be freed once written)."""
        return self.parts.pop(name, [])


def window_train_file(can: CanLog, window: int, stride: int, block: ValidationBlock, source: int
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train and validation window graphs of one train file, split at ``block``.

    Each train row range is windowed on its own, so no train window spans the validation block.
    """
    train = concat_graphs([build_graphs_raw(can, window, stride, rows, source=source) for rows in block.train])
    val = build_graphs_raw(can, window, stride, block.val, source=source)
    return train, val


def validation_record(block: ValidationBlock, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor]
                      ) -> dict[str, Any]:
    """The manifest's account of one train file's split: rows of each part, windows and attack windows."""
    return {**block.manifest_entry(),
            "windows": {"train": int(train["y"].shape[0]), "val": int(val["y"].shape[0])},
            "attack_windows": {"train": int(train["y"].sum()), "val": int(val["y"].sum())}}


def describe_validation(record: dict[str, Any]) -> str:
    start, stop = record["val_rows"]
    windows, attacks = record["windows"], record["attack_windows"]
    return (f"{windows['train']} train + {windows['val']} val windows; validation rows {start}:{stop} "
            f"({record['rule']}); attack windows {attacks['train']} train / {attacks['val']} val")


def processing_order(sources: list[SourceFile]) -> list[int]:
    """Indices of the files to parse: train files, then scenario by scenario, biggest first.

    Train files must come first: the vocabulary is fit on them before any split is written. Taking
    big files (and scenarios) first leaves the smallest for last, which shortens the stretch at the
    end where nothing is left to overlap with.
    """
    size = {i: s.path.stat().st_size for i, s in enumerate(sources) if not s.duplicate_of}
    groups: dict[str | None, list[int]] = {}
    for i in size:
        groups.setdefault(sources[i].scenario if sources[i].role == "test" else None, []).append(i)
    order = sorted(groups, key=lambda g: (g is not None, -sum(size[i] for i in groups[g])))
    return [i for g in order for i in sorted(groups[g], key=lambda i: -size[i])]


def _write_split(name: str, parts: list[tuple[int, dict[str, torch.Tensor]]], vocab: np.ndarray, window: int,
                 node_features: int, out: Path, log: logging.Logger) -> dict[str, Any]:
    """Join one split's per-file graphs (in source order), map CAN ids through the vocabulary, write ``<name>.pt``."""
    graphs = (concat_graphs([p for _, p in sorted(parts, key=lambda item: item[0])]) if parts
              else empty_graphs(raw=True, node_features=node_features))
    parts.clear()
    if graphs["y"].shape[0] == 0:
        log.warning("split %s has no windows (its files are shorter than %d rows)", name, window)
    graphs = with_vocab(graphs, vocab)
    save_split(graphs, out / f"{name}.pt")
    entry = _split_entry(name, graphs)
    log.info("split %s: %d windows, label histogram %s", name, entry["graphs"], entry["labels"])
    return entry


def _split_entry(name: str, graphs: dict[str, torch.Tensor]) -> dict[str, Any]:
    y = graphs["y"]
    ones = int(y.sum())
    return {"file": f"{name}.pt", "graphs": int(y.shape[0]), "labels": {"0": int(y.shape[0]) - ones, "1": ones}}
