"""Readers for typed edge lists: PrimeKG's 12-column kg.csv and a generic 5-column edge list.

Both are parsed column-wise with pyarrow and every node is mapped to a dense integer with sorts
and dictionary encodings, never with a Python dict over rows: PrimeKG has 8.1M rows. Bad input
stops with a :class:`KGInputError` naming the file, the line (1 = header) and the column.

Node identity:

* PrimeKG: ``x_index`` / ``y_index`` (the global node index). A node whose type differs between
  rows is an error, because the index is meant to name one node.
* Edge list: the pair ``(type, id)``; the same id may name nodes of different types (ACM's paper 0
  and author 0), so a type "conflict" cannot be told apart from two nodes and is not checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from pipeline.errors import InputError

PRIMEKG_COLUMNS = ("relation", "display_relation", "x_index", "x_id", "x_type", "x_name", "x_source",
                   "y_index", "y_id", "y_type", "y_name", "y_source")
EDGE_LIST_COLUMNS = ("src_type", "src_id", "relation", "dst_type", "dst_id")
Layout = Literal["auto", "primekg", "edge_list"]

_PRIMEKG_READ = ("relation", "x_index", "x_id", "x_type", "x_name", "y_index", "y_id", "y_type", "y_name")
_PRIMEKG_REQUIRED = ("relation", "x_index", "x_id", "x_type", "y_index", "y_id", "y_type")
_HEADER_LINE = 1
_FIRST_DATA_LINE = 2


class KGInputError(InputError):
    """An edge file that cannot be read; the message names the file, line and column, and the fix."""


@dataclass
class EdgeTable:
    """Typed edge rows with their endpoints mapped to dense node indices ``0..N-1``.

    Rows are kept as read (both directions, duplicates): turning them into edge types is the
    cache's job, so the reader stays a faithful view of the file.
    """

    source: str
    """The file read (or a description, for generated graphs)."""
    type_names: list[str]
    relation_names: list[str]
    node_type: np.ndarray
    """int32[N]: index into ``type_names`` per node."""
    node_id: pa.Array
    """string[N]: the node's id in the file (x_id / src_id)."""
    node_name: pa.Array
    """string[N]: display name (x_name; the id when the layout has no names)."""
    src: np.ndarray
    """int64[E]: node index of each row's source (x / src)."""
    dst: np.ndarray
    relation: np.ndarray
    """int32[E]: index into ``relation_names`` per row."""

    @property
    def num_nodes(self) -> int:
        return int(self.node_type.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.src.shape[0])


# -- entry point -------------------------------------------------------------------------------

def read_edges(path: str | Path, layout: Layout = "auto", *, limit_rows: int | None = None,
               include_node_types: Sequence[str] | None = None) -> EdgeTable:
    """Read ``path`` (CSV or TSV, optionally compressed) into an :class:`EdgeTable`.

    ``limit_rows`` reads only the first rows (slices); ``include_node_types`` keeps only rows whose
    two endpoints are of those types.
    """
    path = Path(path)
    header, delimiter = read_header(path)
    layout = resolve_layout(path, header, layout)
    columns = _PRIMEKG_READ if layout == "primekg" else EDGE_LIST_COLUMNS
    table = _read_columns(path, delimiter, header, columns, limit_rows)
    if table.num_rows == 0:
        raise KGInputError(f"{path}: line {_FIRST_DATA_LINE}: no edge rows after the header")
    required = _PRIMEKG_REQUIRED if layout == "primekg" else EDGE_LIST_COLUMNS
    for name in required:
        _check_not_empty(path, table, name)
    if layout == "primekg":
        return _primekg(path, table, include_node_types, limit_rows is not None)
    return _edge_list(path, table, include_node_types, limit_rows is not None)


def read_header(path: Path) -> tuple[list[str], str]:
    """Column names of the first line and the delimiter (tab if the header has one, else comma)."""
    if not path.is_file():
        raise KGInputError(f"{path}: no such file (set kg.file, or data.dataset to the folder that holds it)")
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(1 << 16)
    first = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    if not first.strip():
        raise KGInputError(f"{path}: line {_HEADER_LINE}: the file is empty; expected a header with the columns "
                           f"{list(PRIMEKG_COLUMNS)} (PrimeKG) or {list(EDGE_LIST_COLUMNS)} (edge list)")
    delimiter = "\t" if "\t" in first else ","
    return [c.strip().strip('"') for c in first.split(delimiter)], delimiter


def resolve_layout(path: Path, header: list[str], layout: Layout) -> Literal["primekg", "edge_list"]:
    """The layout named, or the one whose columns the header has; missing columns are an error."""
    candidates = {"primekg": PRIMEKG_COLUMNS, "edge_list": EDGE_LIST_COLUMNS}
    if layout == "auto":
        for name, cols in candidates.items():
            if set(cols) <= set(header):
                return name  # type: ignore[return-value]
        best = min(candidates, key=lambda n: len(set(candidates[n]) - set(header)))
        missing = [c for c in candidates[best] if c not in header]
        raise KGInputError(f"{path}: line {_HEADER_LINE} (header): missing column(s) {missing} of the {best} layout; "
                           f"expected {list(PRIMEKG_COLUMNS)} (PrimeKG kg.csv) or {list(EDGE_LIST_COLUMNS)} "
                           f"(typed edge list), got {header}")
    missing = [c for c in candidates[layout] if c not in header]
    if missing:
        raise KGInputError(f"{path}: line {_HEADER_LINE} (header): missing column(s) {missing} for kg.layout={layout}; "
                           f"got {header}")
    return layout


# -- parsing -----------------------------------------------------------------------------------

def _read_columns(path: Path, delimiter: str, header: list[str], columns: Iterable[str],
                  limit_rows: int | None) -> pa.Table:
    """The named columns as strings; a row with the wrong field count is reported by its line."""
    columns = list(columns)
    convert = pcsv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in columns},
                                  strings_can_be_null=False, quoted_strings_can_be_null=False)
    parse = pcsv.ParseOptions(delimiter=delimiter)
    try:
        if limit_rows is None:
            return pcsv.read_csv(path, parse_options=parse, convert_options=convert)
        return _read_head(path, parse, convert, limit_rows)
    except pa.ArrowInvalid as exc:
        raise _locate_bad_row(path, delimiter, convert, exc) from None


def _read_head(path: Path, parse: pcsv.ParseOptions, convert: pcsv.ConvertOptions, limit: int) -> pa.Table:
    """The first ``limit`` rows, streamed so a slice of a large file reads only its head."""
    batches, rows = [], 0
    with pcsv.open_csv(path, parse_options=parse, convert_options=convert) as reader:
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            if rows >= limit:
                break
        schema = reader.schema
    return pa.Table.from_batches(batches, schema=schema).slice(0, limit)


def _locate_bad_row(path: Path, delimiter: str, convert: pcsv.ConvertOptions, exc: Exception) -> KGInputError:
    """Re-parse on one thread, where pyarrow knows line numbers, to name the first bad row."""
    found: list[pcsv.InvalidRow] = []

    def handler(row: pcsv.InvalidRow) -> str:
        found.append(row)
        return "error"

    try:
        pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=False),
                      parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=handler),
                      convert_options=convert)
    except pa.ArrowInvalid:
        pass
    if found:
        row = found[0]
        line = row.number if row.number is not None else "?"
        return KGInputError(f"{path}: line {line}: expected {row.expected_columns} fields, got {row.actual_columns} "
                            f"({(row.text or '')[:120]!r})")
    return KGInputError(f"{path}: cannot parse: {exc}")


def _check_not_empty(path: Path, table: pa.Table, column: str) -> None:
    col = table.column(column)
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
    if pc.any(empty).as_py():
        row = int(pc.index(empty, True).as_py())
        raise KGInputError(f"{path}: line {row + _FIRST_DATA_LINE}, column {column!r}: empty value")


def _as_int64(path: Path, table: pa.Table, column: str) -> np.ndarray:
    col = pc.utf8_trim_whitespace(table.column(column))
    ok = pc.match_substring_regex(col, r"^-?[0-9]+$")
    if not pc.all(ok).as_py():
        row = int(pc.index(ok, False).as_py())
        raise KGInputError(f"{path}: line {row + _FIRST_DATA_LINE}, column {column!r}: not an integer node index: "
                           f"{table.column(column)[row].as_py()!r}")
    return pc.cast(col, pa.int64()).to_numpy()


def _codes(*columns: pa.ChunkedArray | pa.Array) -> tuple[list[np.ndarray], pa.Array]:
    """Integer codes of several string columns over one shared dictionary (vectorized, no dicts)."""
    encoded = [pc.dictionary_encode(pc.utf8_trim_whitespace(c)).combine_chunks()
               if isinstance(c, pa.ChunkedArray) else pc.dictionary_encode(pc.utf8_trim_whitespace(c))
               for c in columns]
    union = pc.dictionary_encode(pa.concat_arrays([e.dictionary for e in encoded]))
    remap = union.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    codes, start = [], 0
    for e in encoded:
        n = len(e.dictionary)
        codes.append(remap[start:start + n][e.indices.to_numpy(zero_copy_only=False).astype(np.int64)])
        start += n
    return codes, union.dictionary


def _type_filter(path: Path, type_names: list[str], src_type: np.ndarray, dst_type: np.ndarray,
                 include: Sequence[str] | None, sliced: bool) -> np.ndarray | None:
    """Mask of rows whose endpoints are both of an included type (None: keep all).

    A type the file lacks is a typo, unless only a slice was read (its rows may not reach it).
    """
    if not include:
        return None
    unknown = sorted(set(include) - set(type_names))
    if unknown and not sliced:
        raise KGInputError(f"{path}: kg.include_node_types names type(s) {unknown} that the file does not have; "
                           f"types in the file: {sorted(type_names)}")
    keep = np.isin(np.arange(len(type_names)), [type_names.index(t) for t in include if t in type_names])
    mask = keep[src_type] & keep[dst_type]
    if not mask.any():
        raise KGInputError(f"{path}: no row has both endpoints among kg.include_node_types={list(include)}")
    return mask


# -- layouts -------------------------------------------------------------------------------------

def _primekg(path: Path, table: pa.Table, include: Sequence[str] | None, sliced: bool) -> EdgeTable:
    x_index, y_index = _as_int64(path, table, "x_index"), _as_int64(path, table, "y_index")
    (x_type, y_type), type_dict = _codes(table.column("x_type"), table.column("y_type"))
    (relation,), rel_dict = _codes(table.column("relation"))
    type_names = type_dict.to_pylist()
    _check_types_agree(path, x_index, y_index, x_type, y_type, type_names)
    mask = _type_filter(path, type_names, x_type, y_type, include, sliced)
    x_id, y_id = table.column("x_id"), table.column("y_id")
    x_name, y_name = table.column("x_name"), table.column("y_name")
    if mask is not None:
        rows = pa.array(np.flatnonzero(mask))
        x_index, y_index, x_type, y_type, relation = (a[mask] for a in (x_index, y_index, x_type, y_type, relation))
        x_id, y_id, x_name, y_name = (c.take(rows) for c in (x_id, y_id, x_name, y_name))
    keys = np.concatenate([x_index, y_index])
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    n_rows = x_index.shape[0]
    node_type = np.concatenate([x_type, y_type])[first].astype(np.int32)
    node_id = _take_first(x_id, y_id, first, n_rows)
    names = _take_first(x_name, y_name, first, n_rows)
    node_name = pc.if_else(pc.equal(pc.utf8_length(names), 0), node_id, names)
    return EdgeTable(source=str(path), type_names=type_names, relation_names=rel_dict.to_pylist(),
                     node_type=node_type, node_id=node_id, node_name=node_name,
                     src=inverse[:n_rows].astype(np.int64), dst=inverse[n_rows:].astype(np.int64),
                     relation=relation.astype(np.int32))


def _check_types_agree(path: Path, x_index: np.ndarray, y_index: np.ndarray, x_type: np.ndarray,
                       y_type: np.ndarray, type_names: list[str]) -> None:
    """Every occurrence of a node index carries the type of its first occurrence (in file order)."""
    n = x_index.shape[0]
    # Interleave x and y of each row, so "first" follows the file: row r's x is 2r, its y 2r+1.
    keys = np.empty(2 * n, dtype=np.int64)
    keys[0::2], keys[1::2] = x_index, y_index
    types = np.empty(2 * n, dtype=np.int64)
    types[0::2], types[1::2] = x_type, y_type
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    bad = np.flatnonzero(types != types[first][inverse])
    if bad.size == 0:
        return
    pos = int(bad[0])
    origin = int(first[inverse[pos]])
    side, origin_side = ("x", "y")[pos % 2], ("x", "y")[origin % 2]
    raise KGInputError(
        f"{path}: line {pos // 2 + _FIRST_DATA_LINE}, column '{side}_type': node index {int(keys[pos])} has type "
        f"{type_names[types[pos]]!r} here but {type_names[types[origin]]!r} at line {origin // 2 + _FIRST_DATA_LINE} "
        f"(column '{origin_side}_type'); a node index must keep one type")


def _take_first(x_col: pa.ChunkedArray, y_col: pa.ChunkedArray, first: np.ndarray, n_rows: int) -> pa.Array:
    """Values at positions ``first`` of the virtual column ``x_col ++ y_col`` (without concatenating it)."""
    from_x = first < n_rows
    order = np.concatenate([np.flatnonzero(from_x), np.flatnonzero(~from_x)])
    parts = pa.concat_arrays([x_col.take(pa.array(first[from_x])).combine_chunks(),
                              y_col.take(pa.array(first[~from_x] - n_rows)).combine_chunks()])
    return parts.take(pa.array(np.argsort(order, kind="stable")))


def _edge_list(path: Path, table: pa.Table, include: Sequence[str] | None, sliced: bool) -> EdgeTable:
    (src_type, dst_type), type_dict = _codes(table.column("src_type"), table.column("dst_type"))
    (src_id, dst_id), id_dict = _codes(table.column("src_id"), table.column("dst_id"))
    (relation,), rel_dict = _codes(table.column("relation"))
    type_names = type_dict.to_pylist()
    mask = _type_filter(path, type_names, src_type, dst_type, include, sliced)
    if mask is not None:
        src_type, dst_type, src_id, dst_id, relation = (a[mask] for a in (src_type, dst_type, src_id, dst_id, relation))
    n_ids = len(id_dict)
    keys = np.concatenate([src_type * n_ids + src_id, dst_type * n_ids + dst_id])
    uniq, inverse = np.unique(keys, return_inverse=True)
    n_rows = src_type.shape[0]
    node_id = id_dict.take(pa.array(uniq % n_ids))
    return EdgeTable(source=str(path), type_names=type_names, relation_names=rel_dict.to_pylist(),
                     node_type=(uniq // n_ids).astype(np.int32), node_id=node_id, node_name=node_id,
                     src=inverse[:n_rows].astype(np.int64), dst=inverse[n_rows:].astype(np.int64),
                     relation=relation.astype(np.int32))
