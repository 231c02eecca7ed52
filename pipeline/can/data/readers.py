"""Raw CAN log readers: four on-disk layouts in, one columnar ``CanLog`` out.

Every layout is parsed column-wise (pyarrow CSV/Parquet readers, pyarrow.compute string kernels
and numpy), never with a Python loop per row, because full captures hold tens of millions of
frames. Each column is decoded by ``pipeline.can.data.fields`` (hex through ``pipeline.can.data.hexcodec``).

This module holds the entry points, layout detection and the per-layout loaders (which columns of
the file to read). File access and CSV streaming are ``pipeline.can.data.rawio``; turning the text
columns into a ``CanLog`` and the bad-row rules are ``pipeline.can.data.decode``.

Layouts (``DataConfig.layout``; ``auto`` detects it per file from its first line):

    can_train_and_test  header CSV/.csv.gz, e.g. ``timestamp,arbitration_id,data_field,attack``
    car_hacking_csv     headerless ``timestamp,id,dlc,b0,..,b{dlc-1},R|T`` (short rows when dlc < 8,
                        or padded to eight zero bytes: then the first dlc bytes are the payload)
    car_hacking_txt     OTIDS ``Timestamp: t  ID: 0350  000  DLC: 8  05 28 ...`` (all label 0)
    parquet             timestamp, id (integer of any width, or hex string), hex payload, label

Header CSV and Parquet columns are found by name (``pipeline.can.data.columns``: ``id``, ``can_id``,
``label``, ``data``, ... or the profile's ``data.columns``); extra columns are ignored. Labels may
be 0/1 numbers, booleans or words (true/false, R/T, normal/attack). Surrounding whitespace in any
field is ignored.

A bad row raises ``CanLogError`` naming the file, the 1-based line and the reason, or with
``bad_rows="skip"`` is dropped and counted in ``CanLog.bad_rows``. Rows keep file order. Any other
unreadable input (truncated gzip, binary junk, a column of the wrong type) is one ``CanLogError``
naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.can.data.canlog import CanLog, CanLogError
from pipeline.can.data.columns import ColumnError, looks_like_header, resolve_columns, split_header
from pipeline.can.data.decode import decode_columns
from pipeline.can.data.fields import is_text, shorten
from pipeline.can.data.rawio import first_line, one_line, read_csv, read_head, read_lines

__all__ = ["CTT_COLUMNS", "LAYOUTS", "READER_VERSION", "CanLog", "CanLogError", "RawCanLog", "detect_layout",
           "load_can_log", "read_can_log"]

LAYOUTS = ("can_train_and_test", "car_hacking_csv", "car_hacking_txt", "parquet")
CTT_COLUMNS = ("timestamp", "arbitration_id", "data_field", "attack")
READER_VERSION = 2
"""Changes whenever the same file reads differently (padded rows, whitespace); part of the cache key."""


# -- public entry points ---------------------------------------------------------------------

@dataclass
class RawCanLog:
    """A capture parsed into text columns but not decoded yet.

    Reading is split in two so a caller can overlap them: ``load_can_log`` is the file-bound half
    (decompressing and tokenizing), ``decode`` the compute-bound half (hex, checks, bad rows).
    """

    path: Path
    layout: str
    columns: pa.Table | pa.Array
    """Headerless layouts: one string per line. Header CSV / Parquet: the timestamp, id, payload and
    label columns in that order, under their names in the file (for messages)."""
    malformed: list[int]
    """1-based lines the CSV tokenizer dropped for a wrong column count."""
    skip: bool

    def decode(self) -> CanLog:
        return decode_columns(self.layout, self.path, self.columns, self.malformed, self.skip)


def read_can_log(path: str | os.PathLike, layout: str = "auto", limit_rows: int | None = None,
                 bad_rows: str = "error", columns: Mapping[str, str] | None = None) -> CanLog:
    """Read one raw capture into columns; see the module docstring for layouts and error rules.

    ``columns`` maps fields (timestamp, id, payload, label) to column names, for header CSV and
    Parquet files whose names are not recognised (``data.columns`` of the profile).
    """
    return load_can_log(path, layout, limit_rows, bad_rows, columns).decode()


def load_can_log(path: str | os.PathLike, layout: str = "auto", limit_rows: int | None = None,
                 bad_rows: str = "error", columns: Mapping[str, str] | None = None) -> RawCanLog:
    """The first half of ``read_can_log``: detect the layout and tokenize the file."""
    path = Path(path)
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: ['auto', *{list(LAYOUTS)}]")
    if not path.is_file():
        raise CanLogError(f"{path}: no such file")
    if layout == "auto":
        layout = detect_layout(path, columns)
    table, malformed = _LOADERS[layout](path, limit_rows, columns or {})
    return RawCanLog(path, layout, table, malformed, bad_rows == "skip")


def detect_layout(path: str | os.PathLike, columns: Mapping[str, str] | None = None) -> str:
    """The layout of ``path`` judged from its first line (or the Parquet magic bytes)."""
    path = Path(path)
    head = read_head(path)
    if head[:4] == b"PAR1":
        return "parquet"
    first = first_line(path, head)
    text = first.strip()
    if text.lower().startswith("timestamp:"):
        return "car_hacking_txt"
    if looks_like_header(split_header(text), columns):
        return "can_train_and_test"
    parts = [c.strip() for c in text.split(",")]
    if len(parts) >= 4 and _is_float(parts[0]) and _is_hex(parts[1]) and parts[2].isdigit():
        return "car_hacking_csv"
    raise CanLogError(
        f"{path}: line 1: not a recognised CAN log: expected a header naming its columns "
        f"(e.g. '{','.join(CTT_COLUMNS)}'; set data.columns for other names), a Car-Hacking row "
        f"'timestamp,id,dlc,b0..,R|T' or an OTIDS line 'Timestamp: t ID: 0316 000 DLC: 8 ...'; "
        f"found {shorten(first)!r}"
    )


# -- layout loaders --------------------------------------------------------------------------

def _load_header_csv(path: Path, limit_rows: int | None, mapping: Mapping[str, str]) -> tuple[pa.Table, list[int]]:
    names = split_header(first_line(path))
    try:
        picked = resolve_columns(names, mapping)
    except ColumnError as exc:
        raise CanLogError(f"{path}: line 1: {exc}") from None
    # Positional names: the header's own may repeat, be blank or differ from the mapping in case.
    keys = [f"c{i}" for i in range(len(names))]
    include = [keys[i] for i in picked]
    fast = {include[0]: pa.float64(), **{k: pa.string() for k in include[1:]}}
    try:
        table, malformed = read_csv(path, limit_rows, header=True, column_types=fast, include=include,
                                    column_names=keys)
    except pa.ArrowInvalid:
        # A timestamp that is not a number: re-read as text to find and name its line.
        try:
            table, malformed = read_csv(path, limit_rows, header=True, include=include, column_names=keys,
                                        column_types=dict.fromkeys(include, pa.string()))
        except pa.ArrowInvalid as exc:
            raise CanLogError(f"{path}: not valid UTF-8 text: {one_line(exc)}") from None
    return table.rename_columns([names[i].strip() for i in picked]), malformed


def _load_parquet(path: Path, limit_rows: int | None, mapping: Mapping[str, str]) -> tuple[pa.Table, list[int]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: metadata that is not UTF-8
        raise CanLogError(f"{path}: not a readable Parquet file: {one_line(exc)}") from None
    try:
        picked = [names[i] for i in resolve_columns(names, mapping)]
    except ColumnError as exc:
        raise CanLogError(f"{path}: {exc}") from None
    batches, rows = [], 0
    try:
        for batch in pf.iter_batches(batch_size=1 << 16, columns=picked):
            if limit_rows is not None and rows + batch.num_rows > limit_rows:
                batch = batch.slice(0, limit_rows - rows)
            batches.append(batch)
            rows += batch.num_rows
            if limit_rows is not None and rows >= limit_rows:
                break
        schema = batches[0].schema if batches else pa.schema([pf.schema_arrow.field(c) for c in picked])
        table = pa.Table.from_batches(batches, schema=schema)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CanLogError(f"{path}: cannot read Parquet data: {one_line(exc)}") from None
    table = pa.table([_plain(table.column(i)) for i in range(table.num_columns)], names=picked)
    _check_types(path, table)
    if table.num_rows == 0:
        raise CanLogError(f"{path}: empty file (no rows)")
    return table, []


# -- Parquet column types ------------------------------------------------------------------

_ACCEPTED: dict[str, tuple[str, Callable[[pa.DataType], bool]]] = {
    "timestamp": ("a number, a timestamp or text",
                  lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
                  or pa.types.is_timestamp(t) or is_text(t)),
    "id": ("an integer or hex text", lambda t: pa.types.is_integer(t) or is_text(t)),
    "payload": ("hex text", lambda t: is_text(t)),
    "label": ("0/1, a boolean or text",
              lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or is_text(t)),
}


def _check_types(path: Path, table: pa.Table) -> None:
    """A whole column of a type no value of which can be read is one error, not a bad row per value."""
    for (role, (expected, ok)), name, column in zip(_ACCEPTED.items(), table.column_names, table.columns):
        if not ok(column.type):
            raise CanLogError(f"{path}: column {name!r} ({role}) has type {column.type}; expected {expected}")


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary-encoded and view columns as their plain value type."""
    t = column.type
    if pa.types.is_dictionary(t):
        return _plain(pc.cast(column, t.value_type))
    if getattr(pa.types, "is_string_view", lambda _: False)(t):
        return pc.cast(column, pa.large_string())
    return column


_LOADERS: dict[str, Callable[[Path, int | None, Mapping[str, str]], tuple[pa.Table | pa.Array, list[int]]]] = {
    "can_train_and_test": _load_header_csv, "car_hacking_csv": lambda p, n, _: read_lines(p, n),
    "car_hacking_txt": lambda p, n, _: read_lines(p, n), "parquet": _load_parquet,
}


# -- small helpers ----------------------------------------------------------------------------

def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)

