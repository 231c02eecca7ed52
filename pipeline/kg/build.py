"""Preprocess for task: kg: the edge file -> the heterogeneous mmap cache, keyed by content and settings.

The cache lives in ``<data.cache_dir>/kg-<key>/``; the key hashes the edge file's content and
every setting that changes the graph, so runs share caches and unchanged inputs make this stage
a no-op. It is built in a temporary folder and renamed into place: bad input (which stops with
an error naming file, line and column) or a killed job leaves no partial cache.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.errors import MissingFileError
from pipeline.kg.cache import CacheParams, build_cache, cache_key
from pipeline.kg.config import KGProfile
from pipeline.kg.reader import read_edges


def cache_params(profile: KGProfile) -> CacheParams:
    kg = profile.kg
    return CacheParams(limit_nodes=kg.limit_nodes, val_fraction=kg.val_fraction, test_fraction=kg.test_fraction,
                       holdout_max=kg.holdout_max, split_seed=kg.split_seed)


def kg_preprocess(profile: KGProfile, log: logging.Logger) -> dict[str, Any]:
    """Build (or find) the cache of ``profile``'s edge file; returns the stage summary."""
    path = profile.kg_path
    kg = profile.kg
    params = cache_params(profile)
    source = {"file": path.name, "sha256": io.file_sha256(path) if path.is_file() else None, "layout": kg.layout,
              "limit_rows": profile.data.limit_rows, "include_node_types": kg.include_node_types}
    if source["sha256"] is None:
        raise MissingFileError(f"{path}: no such file (kg.file={kg.file!r} inside data.dataset={profile.data.dataset!r})")
    key = cache_key(source, params.as_dict())
    cache_dir = profile.cache_path / f"kg-{key}"
    manifest = io.keyed_manifest(cache_dir, key)
    if manifest is not None:
        log.info("knowledge-graph cache %s is up to date (key %s); nothing to do", cache_dir, key)
        return summary(cache_dir, manifest)
    table = read_edges(path, kg.layout, limit_rows=profile.data.limit_rows, include_node_types=kg.include_node_types)
    log.info("%s: %d rows, %d nodes of %d types, %d relations", path, table.num_rows, table.num_nodes,
             len(table.type_names), len(table.relation_names))
    manifest = build_cache(table, params, cache_dir, key, {**source, "path": str(path)})
    log.info("knowledge-graph cache written to %s: %d nodes, %d edge types (%d message types), "
             "edges train/val/test %s; dropped %s", cache_dir, manifest["num_nodes"], len(manifest["edge_types"]),
             len(manifest["message_types"]), manifest["num_edges"], manifest["dropped"])
    return summary(cache_dir, manifest)


def summary(cache_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    return {"cache_dir": str(Path(cache_dir).resolve()), "result_key": manifest["key"],
            "nodes": {t["name"]: t["count"] for t in manifest["node_types"]},
            "edges": manifest["num_edges"], "edge_types": len(manifest["edge_types"])}
