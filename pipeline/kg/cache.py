"""The heterogeneous graph cache: typed nodes with a local index per type, edges per edge type,
held-out edges, and a CSC adjacency per message direction, all as .npy files opened with mmap.

Layout of ``<cache_dir>/kg-<key>/``::

    manifest.json            types, counts, files, parameters, what was dropped and why
    nodes/<t>.parquet        node_id, node_name of node type t, in local-index order
    edges/<k>.<split>.npy    int64[2, E]: (src local, dst local) of edge type k, split train/val/test
    csc/<m>.ptr.npy          int64[N_dst + 1]: message type m, incoming edges of each dst node ...
    csc/<m>.col.npy          int64[E]: ... their source nodes (train edges only)

Edge types. Rows of one relation between types ``a`` and ``b`` are one undirected edge set,
whichever way a row points (PrimeKG writes each edge in both directions): an edge type
``(a, r, b)`` keeps each pair once, oriented as the relation's first row in the file. Message
passing runs both ways: ``(a, r, b)`` and the added reverse ``(b, rev_r, a)``; when ``a == b``
the one message type ``(a, r, a)`` holds both directions. Duplicates and self-loops are dropped
and counted.

Held-out edges. Per edge type, ``val_fraction`` and ``test_fraction`` of its pairs (at most
``holdout_max`` each; none for types under ``MIN_EDGES_FOR_HOLDOUT``) are kept out of the
training graph, in both directions. One randomly chosen edge of every node is never held out,
so no node loses all its training edges.

Internally node types are ``t0, t1, ...`` and message relations ``r0, r1, ...``: model modules
are keyed by these, so names with dots or odd characters in user files cannot break them; the
manifest maps them back to the names in the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline import io
from pipeline.errors import InputError, MissingFileError
from pipeline.kg.reader import EdgeTable

CACHE_VERSION = 1
MANIFEST = io.MANIFEST
MIN_EDGES_FOR_HOLDOUT = 10
"""Edge types with fewer pairs keep them all for training (a held-out edge or two says nothing)."""
SPLITS = ("train", "val", "test")

EdgeType = tuple[str, str, str]


@dataclass(frozen=True)
class CacheParams:
    """Every setting that changes the cached graph (and so belongs in its key)."""

    limit_nodes: int | None = None
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    holdout_max: int | None = 10_000
    split_seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"limit_nodes": self.limit_nodes, "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction, "holdout_max": self.holdout_max,
                "split_seed": self.split_seed, "version": CACHE_VERSION}


def cache_key(source: dict[str, Any], params: dict[str, Any]) -> str:
    return io.digest({"source": source, "params": params})


# -- building ------------------------------------------------------------------------------------

def write_cache(table: EdgeTable, params: CacheParams, out: Path, key: str,
                source: dict[str, Any]) -> dict[str, Any]:
    """Turn ``table`` into the cache layout under ``out`` (a fresh folder); returns the manifest.

    The caller writes ``out`` as a temporary folder and renames it (see ``build_cache``), so a
    failure at any point leaves no cache behind.
    """
    dropped: dict[str, int] = {"rows_read": table.num_rows}
    node_type, src, dst, rel, kept = _restrict_nodes(table, params.limit_nodes, dropped)
    type_codes = np.unique(node_type)
    type_alias = np.full(len(table.type_names), -1, dtype=np.int64)
    type_alias[type_codes] = np.arange(type_codes.shape[0])
    node_type = type_alias[node_type]
    type_names = [table.type_names[c] for c in type_codes]
    num_types = len(type_names)
    local, counts = _local_index(node_type, num_types)

    etype, u, v, canon = _canonical_edges(node_type, src, dst, rel, num_types, dropped)
    split = holdout_split(etype, u, v, len(canon), params)

    (out / "nodes").mkdir()
    (out / "edges").mkdir()
    (out / "csc").mkdir()
    node_entries = _write_nodes(table, kept, node_type, local, type_names, counts, out)
    edge_entries, message_entries = [], []
    for k, (a, r, b) in enumerate(canon):
        mask = etype == k
        uk, vk, sk = local[u[mask]], local[v[mask]], split[mask]
        files = {}
        for s, name in enumerate(SPLITS):
            files[name] = f"edges/{k}.{name}.npy"
            np.save(out / files[name], np.stack([uk[sk == s], vk[sk == s]]).astype(np.int64))
        entry = {"alias": f"e{k}", "src": type_names[a], "rel": table.relation_names[r], "dst": type_names[b],
                 "src_alias": f"t{a}", "dst_alias": f"t{b}", "symmetric": bool(a == b), "files": files,
                 **{name: int((sk == s).sum()) for s, name in enumerate(SPLITS)}}
        train_u, train_v = uk[sk == 0], vk[sk == 0]
        directions = [("sym", a, a)] if a == b else [("fwd", a, b), ("rev", b, a)]
        entry["messages"] = []
        for direction, s_t, d_t in directions:
            m = len(message_entries)
            rel_name = entry["rel"] if direction != "rev" else f"rev_{entry['rel']}"
            s_l, d_l = message_pairs(direction, train_u, train_v)
            message_entries.append(_write_csc(out, m, s_l, d_l, int(counts[d_t]), {
                "src": type_names[s_t], "rel": rel_name, "dst": type_names[d_t], "src_alias": f"t{s_t}",
                "rel_alias": f"r{m}", "dst_alias": f"t{d_t}", "edge_type": k, "direction": direction}))
            entry["messages"].append(m)
        edge_entries.append(entry)
    return {
        "key": key, "version": CACHE_VERSION, "source": source, "params": params.as_dict(),
        "node_types": node_entries, "edge_types": edge_entries, "message_types": message_entries,
        "num_nodes": int(counts.sum()), "num_edges": {name: int(sum(e[name] for e in edge_entries)) for name in SPLITS},
        "dropped": dropped,
    }


def _restrict_nodes(table: EdgeTable, limit: int | None, dropped: dict[str, int]):
    """Drop self-loops, apply ``limit_nodes`` (keep the most connected nodes), drop nodes left without edges.

    Returns node types of the kept nodes, edges renumbered to them, and the kept original indices.
    """
    loops = table.src == table.dst
    dropped["self_loops"] = int(loops.sum())
    src, dst, rel = table.src[~loops], table.dst[~loops], table.relation[~loops]
    n = table.num_nodes
    if limit is not None and limit < n:
        degree = np.bincount(src, minlength=n) + np.bincount(dst, minlength=n)
        top = np.argsort(-degree, kind="stable")[:limit]
        keep = np.zeros(n, dtype=bool)
        keep[top] = True
        rows = keep[src] & keep[dst]
        dropped["rows_outside_limit_nodes"] = int((~rows).sum())
        src, dst, rel = src[rows], dst[rows], rel[rows]
    used = np.zeros(n, dtype=bool)
    used[src] = True
    used[dst] = True
    dropped["nodes_without_edges"] = int(n - used.sum()) if limit is None else int(min(limit, n) - used.sum())
    kept = np.flatnonzero(used)
    renumber = np.full(n, -1, dtype=np.int64)
    renumber[kept] = np.arange(kept.shape[0])
    if kept.shape[0] == 0:
        raise InputError(f"{table.source}: no edges left (kg.limit_nodes={limit} keeps no edge with both ends)")
    return table.node_type[kept].astype(np.int64), renumber[src], renumber[dst], rel.astype(np.int64), kept


def _local_index(node_type: np.ndarray, num_types: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each node among the nodes of its type (in global order), and the count per type."""
    order = np.argsort(node_type, kind="stable")
    counts = np.bincount(node_type, minlength=num_types)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    local = np.empty_like(node_type)
    local[order] = np.arange(node_type.shape[0]) - start[node_type[order]]
    return local, counts


def _canonical_edges(node_type: np.ndarray, src: np.ndarray, dst: np.ndarray, rel: np.ndarray, num_types: int,
                     dropped: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """Rows -> deduplicated undirected pairs per edge type (see the module docstring)."""
    ts, td = node_type[src], node_type[dst]
    combo = (rel * num_types + ts) * num_types + td
    combos, first = np.unique(combo, return_index=True)
    first_of = dict(zip(combos.tolist(), first.tolist()))
    # A combination and its mirror (same relation, types swapped) are one edge type, oriented as
    # whichever appears first in the file. This loops over combinations (dozens), not rows.
    flip_combo: dict[int, int] = {}
    canon: list[tuple[int, int, int]] = []
    canon_id: dict[int, int] = {}
    for c in sorted(combos.tolist(), key=lambda c: first_of[c]):
        r, rest = divmod(c, num_types * num_types)
        a, b = divmod(rest, num_types)
        mirror = (r * num_types + b) * num_types + a
        if mirror in canon_id and mirror != c:
            flip_combo[c] = mirror
            continue
        canon_id[c] = len(canon)
        canon.append((a, r, b))
    flip = np.isin(combo, np.array(list(flip_combo), dtype=np.int64))
    src, dst = np.where(flip, dst, src), np.where(flip, src, dst)
    lut_keys = np.array(list(canon_id) + list(flip_combo), dtype=np.int64)
    lut_vals = np.array(list(canon_id.values()) + [canon_id[m] for m in flip_combo.values()], dtype=np.int64)
    order = np.argsort(lut_keys)
    etype = lut_vals[order][np.searchsorted(lut_keys[order], combo)]
    same = node_type[src] == node_type[dst]
    src, dst = np.where(same, np.minimum(src, dst), src), np.where(same, np.maximum(src, dst), dst)
    n = int(node_type.shape[0])
    if len(canon) * n * n < 2**62:
        key = (etype * n + src) * n + dst
        _, first_row = np.unique(key, return_index=True)
    else:  # too many nodes for one int64 key
        order = np.lexsort((dst, src, etype))
        stacked = np.stack([etype[order], src[order], dst[order]])
        new = np.concatenate([[True], (np.diff(stacked, axis=1) != 0).any(axis=0)])
        first_row = order[new]
    first_row = np.sort(first_row)
    dropped["duplicate_rows"] = int(src.shape[0] - first_row.shape[0])
    return etype[first_row], src[first_row], dst[first_row], canon


def holdout_split(etype: np.ndarray, u: np.ndarray, v: np.ndarray, num_edge_types: int,
                  params: CacheParams) -> np.ndarray:
    """0/1/2 (train/val/test) per edge: a fraction per edge type, never a node's protected edge."""
    rng = np.random.default_rng(params.split_seed)
    n_edges = etype.shape[0]
    perm = rng.permutation(n_edges)
    # The first edge of each node in a random order is its protected edge (vectorized: unique).
    _, first = np.unique(np.concatenate([u[perm], v[perm]]), return_index=True)
    protected = np.zeros(n_edges, dtype=bool)
    protected[perm[first % n_edges]] = True
    split = np.zeros(n_edges, dtype=np.int8)
    for k in range(num_edge_types):
        members = np.flatnonzero(etype == k)
        if members.shape[0] < MIN_EDGES_FOR_HOLDOUT:
            continue
        n_val = _holdout_count(members.shape[0], params.val_fraction, params.holdout_max)
        n_test = _holdout_count(members.shape[0], params.test_fraction, params.holdout_max)
        candidates = rng.permutation(members[~protected[members]])
        split[candidates[:n_test]] = 2
        split[candidates[n_test:n_test + n_val]] = 1
    return split


def _holdout_count(n: int, fraction: float, cap: int | None) -> int:
    count = int(round(n * fraction))
    if fraction > 0:
        count = max(count, 1)
    return min(count, cap) if cap is not None else count


def _write_nodes(table: EdgeTable, kept: np.ndarray, node_type: np.ndarray, local: np.ndarray,
                 type_names: list[str], counts: np.ndarray, out: Path) -> list[dict[str, Any]]:
    order = np.lexsort((local, node_type))
    originals = pa.array(kept[order])
    ids, names = table.node_id.take(originals), table.node_name.take(originals)
    entries, start = [], 0
    for t, name in enumerate(type_names):
        n = int(counts[t])
        pq.write_table(pa.table({"node_id": ids.slice(start, n), "node_name": names.slice(start, n)}),
                       out / "nodes" / f"{t}.parquet")
        entries.append({"alias": f"t{t}", "name": name, "count": n, "file": f"nodes/{t}.parquet"})
        start += n
    return entries


def message_pairs(direction: str, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source, destination) of the messages that edges (u, v) send in ``direction`` (fwd, rev or sym)."""
    if direction == "fwd":
        return u, v
    if direction == "rev":
        return v, u
    return np.concatenate([u, v]), np.concatenate([v, u])


def csc_arrays(src: np.ndarray, dst: np.ndarray, num_dst: int) -> tuple[np.ndarray, np.ndarray]:
    """(ptr over destination nodes, source of each incoming edge, sorted by destination)."""
    order = np.argsort(dst, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=num_dst))]).astype(np.int64)
    return ptr, src[order].astype(np.int64)


def _write_csc(out: Path, m: int, src: np.ndarray, dst: np.ndarray, num_dst: int,
               entry: dict[str, Any]) -> dict[str, Any]:
    """Incoming edges of every destination node, sorted by destination (what neighbour sampling reads)."""
    ptr, col = csc_arrays(src, dst, num_dst)
    np.save(out / f"csc/{m}.ptr.npy", ptr)
    np.save(out / f"csc/{m}.col.npy", col)
    return {**entry, "edges": int(src.shape[0]), "ptr": f"csc/{m}.ptr.npy", "col": f"csc/{m}.col.npy"}


def build_cache(table: EdgeTable, params: CacheParams, cache_dir: Path, key: str,
                source: dict[str, Any]) -> dict[str, Any]:
    """Write the cache to a temporary folder beside ``cache_dir`` and rename it into place (a copy
    another job finished meanwhile is kept, see :func:`pipeline.io.publish_keyed_dir`)."""
    manifest, _ = io.publish_keyed_dir(cache_dir, key, lambda tmp: write_cache(table, params, tmp, key, source))
    return manifest


# -- reading -------------------------------------------------------------------------------------

def _load(path: Path) -> torch.Tensor:
    # Copy-on-write mmap: pages are read from the file on demand and shared, never copied unless written.
    return torch.from_numpy(np.load(path, mmap_mode="c"))


@dataclass
class KGGraph:
    """An opened cache: tensors are mmap views, so opening is instant and memory grows with use."""

    path: Path
    manifest: dict[str, Any]
    num_nodes: dict[str, int] = field(default_factory=dict)
    """Nodes per node-type alias (t0, t1, ...)."""
    csc: dict[EdgeType, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Message type (src alias, rel alias, dst alias) -> (ptr over dst nodes, src nodes)."""

    @classmethod
    def open(cls, path: str | Path) -> "KGGraph":
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise MissingFileError(f"{path} is not a knowledge-graph cache (no {MANIFEST}); re-run the preprocess stage")
        manifest = io.read_json(path / MANIFEST)
        graph = cls(path, manifest, {t["alias"]: int(t["count"]) for t in manifest["node_types"]})
        for m in manifest["message_types"]:
            graph.csc[message_key(m)] = (_load(path / m["ptr"]), _load(path / m["col"]))
        return graph

    # -- types ---------------------------------------------------------
    @property
    def node_types(self) -> list[str]:
        return [t["alias"] for t in self.manifest["node_types"]]

    @property
    def message_types(self) -> list[EdgeType]:
        return [message_key(m) for m in self.manifest["message_types"]]

    @property
    def edge_types(self) -> list[dict[str, Any]]:
        """Manifest entries of the (undirected) edge types: the supervision targets."""
        return self.manifest["edge_types"]

    def metadata(self) -> tuple[list[str], list[EdgeType]]:
        """(node types, message types) in PyG's metadata form."""
        return self.node_types, self.message_types

    def type_name(self, alias: str) -> str:
        return next(t["name"] for t in self.manifest["node_types"] if t["alias"] == alias)

    def edge_type_name(self, k: int) -> str:
        e = self.edge_types[k]
        return f"{e['src']} -[{e['rel']}]- {e['dst']}"

    def messages_of(self, k: int) -> list[tuple[EdgeType, str]]:
        """Message types carrying edge type ``k`` and their direction (fwd, rev or sym)."""
        return [(message_key(self.manifest["message_types"][m]), self.manifest["message_types"][m]["direction"])
                for m in self.edge_types[k]["messages"]]

    def with_edges(self, splits: tuple[str, ...]) -> "KGGraph":
        """The same graph with a message adjacency over the edges of ``splits`` (built in memory, as
        the cache stores the training one only): ``("train", "val", "test")`` is every edge of the file."""
        if tuple(splits) == ("train",):
            return self
        csc = {}
        for entry in self.manifest["message_types"]:
            edges = torch.cat([self.edges(entry["edge_type"], s) for s in splits], dim=1).numpy()
            src, dst = message_pairs(entry["direction"], edges[0], edges[1])
            ptr, col = csc_arrays(src, dst, self.num_nodes[entry["dst_alias"]])
            csc[message_key(entry)] = (torch.from_numpy(ptr), torch.from_numpy(col))
        return replace(self, csc=csc)

    # -- arrays ----------------------------------------------------------
    def edges(self, k: int, split: str) -> torch.Tensor:
        """int64[2, E] local (src, dst) pairs of edge type ``k`` in ``split`` (train, val or test)."""
        return _load(self.path / self.edge_types[k]["files"][split])

    def node_table(self, alias: str) -> pa.Table:
        entry = next(t for t in self.manifest["node_types"] if t["alias"] == alias)
        return pq.read_table(self.path / entry["file"])

    def num_edges(self, split: str = "train") -> int:
        return int(sum(e[split] for e in self.edge_types))

    def host_bytes(self) -> int:
        """Bytes of the adjacency and train edges once paged in (host memory during training)."""
        total = sum(p.numel() * 8 + c.numel() * 8 for p, c in self.csc.values())
        return total + sum(e["train"] * 16 for e in self.edge_types)


def message_key(entry: dict[str, Any]) -> EdgeType:
    return (entry["src_alias"], entry["rel_alias"], entry["dst_alias"])
