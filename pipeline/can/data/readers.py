"""Raw CAN log readers: four on-disk layouts in, one columnar ``CanLog`` out.

Every layout is parsed column-wise (pyarrow CSV/Parquet readers, pyarrow.compute string kernels
and numpy), never with a Python loop per row, because full captures hold tens of millions of
frames. Each column is decoded by ``pipeline.can.data.fields`` (hex through ``pipeline.can.data.hexcodec``).

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

import gzip
import os
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from pipeline.can.data.columns import ColumnError, looks_like_header, resolve_columns, split_header
from pipeline.can.data.fields import (
    MAX_PAYLOAD_BYTES,
    Checks,
    combine,
    is_text,
    parse_float,
    parse_hex_payload,
    parse_id,
    parse_label,
    parse_words,
    shorten,
    text_lengths,
    value_at,
)
from pipeline.errors import InputError

LAYOUTS = ("can_train_and_test", "car_hacking_csv", "car_hacking_txt", "parquet")
CTT_COLUMNS = ("timestamp", "arbitration_id", "data_field", "attack")
READER_VERSION = 2
"""Changes whenever the same file reads differently (padded rows, whitespace); part of the cache key."""
_BLOCK_SIZE = 4 << 20
_SNIFF_BYTES = 1 << 16

_CH_LINE = (r"^\s*(?P<ts>[^,]*?)\s*,\s*(?P<id>[^,]*?)\s*,\s*(?P<dlc>[^,]*?)\s*,"
            r"(?P<data>(?:[^,]*,)*?)\s*(?P<flag>[^,]*?)\s*$")
_CH_DATA_OK = r"^(?:\s*[0-9A-Fa-f]{2}\s*,)*$"
_TXT_LINE = (r"^\s*Timestamp:\s*(?P<ts>\S+)\s+ID:\s*(?P<id>\S+)\s+(?P<rtr>\S+)\s+DLC:\s*(?P<dlc>\S+)"
             r"(?P<data>.*?)\s*$")
_TXT_DATA_OK = r"^(?:\s+[0-9A-Fa-f]{2})*$"


class CanLogError(InputError):
    """A raw log that cannot be read; the message names the file, the line and the reason."""


@dataclass
class CanLog:
    """One capture as columns, in file order."""

    ts: np.ndarray
    """float64 [N] seconds."""
    can_id: np.ndarray
    """uint32 [N] arbitration id."""
    dlc: np.ndarray
    """uint8 [N] payload length in bytes (0-8)."""
    payload: np.ndarray
    """uint8 [N, 8] payload bytes, zero-padded past dlc."""
    label: np.ndarray
    """uint8 [N] 1 = injected/attack frame."""
    path: Path | None = None
    bad_rows: int = 0
    """Rows dropped in skip mode."""
    layout: str = ""
    padded_rows: int = 0
    """Car-Hacking rows whose DLC < 8 bytes were padded with zero bytes to eight fields (read as DLC bytes)."""

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def slice(self, start: int, stop: int) -> "CanLog":
        """Rows ``start:stop`` as views (no copy)."""
        return CanLog(self.ts[start:stop], self.can_id[start:stop], self.dlc[start:stop],
                      self.payload[start:stop], self.label[start:stop], self.path, self.bad_rows, self.layout,
                      self.padded_rows)

    @classmethod
    def empty(cls, path: Path | None = None, bad_rows: int = 0, layout: str = "") -> "CanLog":
        return cls(np.zeros(0, np.float64), np.zeros(0, np.uint32), np.zeros(0, np.uint8),
                   np.zeros((0, MAX_PAYLOAD_BYTES), np.uint8), np.zeros(0, np.uint8), path, bad_rows, layout)


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
        log = _DECODERS[self.layout](self.path, self.columns, self.malformed, self.skip)
        log.layout = self.layout
        return log


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
    head = _read_head(path)
    if head[:4] == b"PAR1":
        return "parquet"
    first = _first_line(path, head)
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


# -- layout readers --------------------------------------------------------------------------

def _load_header_csv(path: Path, limit_rows: int | None, mapping: Mapping[str, str]) -> tuple[pa.Table, list[int]]:
    names = split_header(_first_line(path))
    try:
        picked = resolve_columns(names, mapping)
    except ColumnError as exc:
        raise CanLogError(f"{path}: line 1: {exc}") from None
    # Positional names: the header's own may repeat, be blank or differ from the mapping in case.
    keys = [f"c{i}" for i in range(len(names))]
    include = [keys[i] for i in picked]
    fast = {include[0]: pa.float64(), **{k: pa.string() for k in include[1:]}}
    try:
        table, malformed = _read_csv(path, limit_rows, header=True, column_types=fast, include=include,
                                     column_names=keys)
    except pa.ArrowInvalid:
        # A timestamp that is not a number: re-read as text to find and name its line.
        try:
            table, malformed = _read_csv(path, limit_rows, header=True, include=include, column_names=keys,
                                         column_types=dict.fromkeys(include, pa.string()))
        except pa.ArrowInvalid as exc:
            raise CanLogError(f"{path}: not valid UTF-8 text: {_one_line(exc)}") from None
    return table.rename_columns([names[i].strip() for i in picked]), malformed


def _decode_table(path: Path, table: pa.Table, malformed: list[int], skip: bool, header_lines: int = 1,
                  unit: str = "line") -> CanLog:
    """Decode the timestamp, id, payload and label columns of a header CSV or Parquet file."""
    names = table.column_names
    checks = Checks(table.num_rows, _blank_rows(table) if header_lines else None)
    ts = parse_float(table.column(0), checks, names[0])
    can_id = parse_id(table.column(1), checks, names[1])
    payload, dlc = parse_hex_payload(table.column(2), checks, names[2])
    label = parse_label(table.column(3), checks, names[3])
    return _finish(path, ts, can_id, dlc, payload, label, checks, malformed, header_lines=header_lines, skip=skip,
                   unit=unit)


def _decode_car_hacking_csv(path: Path, lines: pa.Array, malformed: list[int], skip: bool) -> CanLog:
    checks = Checks(len(lines), text_lengths(lines) == 0)
    parts = pc.extract_regex(lines, _CH_LINE)
    structured = np.asarray(parts.is_valid(), dtype=bool)
    checks.add(~structured, lambda i: "malformed row: expected 'timestamp,id,dlc,b0,..,b{dlc-1},R|T', "
                                      f"found {value_at(lines, i)}")
    parts = _fill_invalid(parts, structured)
    data = parts.field("data")
    data_ok = np.asarray(pc.match_substring_regex(data, _CH_DATA_OK).to_numpy(zero_copy_only=False), dtype=bool)
    checks.add(~data_ok, lambda i: f"payload bytes must be two-digit hex values, found {value_at(data, i)}")
    hexdata = pc.if_else(pa.array(data_ok), pc.replace_substring_regex(data, r"[\s,]", ""), "")
    return _from_text_fields(path, parts, hexdata, checks, malformed, skip, flags={"r": 0, "t": 1}, padding=True)


def _decode_car_hacking_txt(path: Path, lines: pa.Array, malformed: list[int], skip: bool) -> CanLog:
    checks = Checks(len(lines), text_lengths(lines) == 0)
    parts = pc.extract_regex(lines, _TXT_LINE)
    structured = np.asarray(parts.is_valid(), dtype=bool)
    checks.add(~structured, lambda i: "malformed line: expected 'Timestamp: t ID: hex rtr DLC: n b0 b1 ..', "
                                      f"found {value_at(lines, i)}")
    parts = _fill_invalid(parts, structured)
    data = parts.field("data")
    data_ok = np.asarray(pc.match_substring_regex(data, _TXT_DATA_OK).to_numpy(zero_copy_only=False), dtype=bool)
    checks.add(~data_ok, lambda i: "payload bytes must be two-digit hex values, "
                                   f"found {value_at(pc.ascii_trim_whitespace(data), i)}")
    hexdata = pc.if_else(pa.array(data_ok), pc.replace_substring_regex(data, r"\s", ""), "")
    # A remote (RTR) frame requests data: its DLC is the length asked for and it carries no bytes.
    remote = ~np.asarray(pc.equal(pc.ascii_ltrim(parts.field("rtr"), "0"), "").to_numpy(zero_copy_only=False),
                         dtype=bool)
    return _from_text_fields(path, parts, hexdata, checks, malformed, skip, flags=None, remote=remote)


def _load_parquet(path: Path, limit_rows: int | None, mapping: Mapping[str, str]) -> tuple[pa.Table, list[int]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: metadata that is not UTF-8
        raise CanLogError(f"{path}: not a readable Parquet file: {_one_line(exc)}") from None
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
        raise CanLogError(f"{path}: cannot read Parquet data: {_one_line(exc)}") from None
    table = pa.table([_plain(table.column(i)) for i in range(table.num_columns)], names=picked)
    _check_types(path, table)
    if table.num_rows == 0:
        raise CanLogError(f"{path}: empty file (no rows)")
    return table, []


def _decode_parquet(path: Path, table: pa.Table, malformed: list[int], skip: bool) -> CanLog:
    return _decode_table(path, table, malformed, skip, header_lines=0, unit="row")


_LOADERS: dict[str, Callable[[Path, int | None, Mapping[str, str]], tuple[pa.Table | pa.Array, list[int]]]] = {
    "can_train_and_test": _load_header_csv, "car_hacking_csv": lambda p, n, _: _read_lines(p, n),
    "car_hacking_txt": lambda p, n, _: _read_lines(p, n), "parquet": _load_parquet,
}
_DECODERS: dict[str, Callable[[Path, pa.Table | pa.Array, list[int], bool], CanLog]] = {
    "can_train_and_test": _decode_table, "car_hacking_csv": _decode_car_hacking_csv,
    "car_hacking_txt": _decode_car_hacking_txt, "parquet": _decode_parquet,
}


# -- shared pieces ----------------------------------------------------------------------------

def _from_text_fields(path: Path, parts: pa.StructArray, hexdata: pa.Array, checks: Checks,
                      malformed: list[int], skip: bool, flags: dict[str, int] | None,
                      remote: np.ndarray | None = None, padding: bool = False) -> CanLog:
    """Decode the regex-extracted fields of the two headerless layouts (no flag column: label 0).

    ``remote`` marks remote frames, which may state a DLC without carrying payload bytes. With
    ``padding``, a row of eight payload bytes whose bytes past its DLC are all zero is a short frame
    padded to full width: its first DLC bytes are the payload.
    """
    ts = parse_float(parts.field("ts"), checks, "timestamp")
    can_id = parse_id(parts.field("id"), checks, "arbitration id")
    dlc = parse_words(parts.field("dlc"), {str(d): d for d in range(MAX_PAYLOAD_BYTES + 1)}, checks, "dlc",
                      f"one of {'/'.join(map(str, range(MAX_PAYLOAD_BYTES + 1)))}")
    payload, nbytes = parse_hex_payload(hexdata, checks, "payload")
    mismatch = (dlc != nbytes) & ~checks.bad
    padded = np.zeros(len(dlc), dtype=bool)
    if padding:
        full = mismatch & (nbytes == MAX_PAYLOAD_BYTES) & (dlc < MAX_PAYLOAD_BYTES)
        past_dlc = np.arange(MAX_PAYLOAD_BYTES) >= dlc[:, None].astype(np.int64)
        padded = full & ~((payload != 0) & past_dlc).any(axis=1)
        mismatch &= ~padded
    if remote is not None:
        mismatch &= ~(remote & (nbytes == 0))
    checks.add(mismatch, lambda i: f"DLC {int(dlc[i])} but {int(nbytes[i])} payload byte(s)"
               + (" (the bytes past the DLC are not zero padding)" if padding and nbytes[i] == MAX_PAYLOAD_BYTES
                  else ""))
    if flags is None:
        label = np.zeros(len(ts), dtype=np.uint8)
    else:
        label = parse_words(parts.field("flag"), flags, checks, "flag", "one of R/T")
    return _finish(path, ts, can_id, dlc, payload, label, checks, malformed, header_lines=0, skip=skip,
                   padded=padded)


def _finish(path: Path, ts: np.ndarray, can_id: np.ndarray, dlc: np.ndarray, payload: np.ndarray,
            label: np.ndarray, checks: Checks, malformed: list[int], header_lines: int, skip: bool,
            unit: str = "line", padded: np.ndarray | None = None) -> CanLog:
    """Raise on the earliest bad row, or drop bad rows (skip mode) and build the log."""
    n_bad = int(checks.bad.sum()) + len(malformed)
    if n_bad and not skip:
        candidates = [(_line_of_row(i, malformed, header_lines), reason(i)) for i, reason in checks.first]
        if malformed:
            candidates.append((min(malformed), "malformed row: wrong number of columns"))
        line, reason = min(candidates, key=lambda c: c[0])
        raise CanLogError(f"{path}: {unit} {line}: {reason} (set data.bad_rows=skip to drop bad rows)")
    drop = checks.bad | checks.blank
    n_padded = int((padded & ~drop).sum()) if padded is not None else 0
    if drop.any():
        keep = ~drop
        ts, can_id, dlc, payload, label = ts[keep], can_id[keep], dlc[keep], payload[keep], label[keep]
    return CanLog(np.ascontiguousarray(ts, np.float64), np.ascontiguousarray(can_id, np.uint32),
                  np.ascontiguousarray(dlc, np.uint8), np.ascontiguousarray(payload, np.uint8),
                  np.ascontiguousarray(label, np.uint8), path, n_bad, padded_rows=n_padded)


def _line_of_row(row: int, malformed: list[int], header_lines: int) -> int:
    """1-based file line of parsed row ``row``, given the lines the CSV reader dropped."""
    line = row + 1 + header_lines
    for dropped in sorted(malformed):
        if dropped <= line:
            line += 1
    return line


# -- column types and values ------------------------------------------------------------------

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


def _blank_rows(table: pa.Table) -> np.ndarray:
    """Rows whose every field is empty or null: what a blank line parses to."""
    blank = np.ones(table.num_rows, dtype=bool)
    for column in table.columns:
        arr = combine(column)
        if is_text(arr.type):
            blank &= np.asarray(pc.fill_null(pc.equal(pc.binary_length(arr), 0), True)
                                .to_numpy(zero_copy_only=False), dtype=bool)
        else:
            blank &= np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if not blank.any():
            break
    return blank


def _fill_invalid(parts: pa.StructArray, valid: np.ndarray) -> pa.StructArray:
    """Regex misses are null structs; give them empty fields so later kernels see strings."""
    if valid.all():
        return parts
    fields = [pc.if_else(pa.array(valid), parts.field(i), "") for i in range(parts.type.num_fields)]
    return pa.StructArray.from_arrays(fields, names=[parts.type.field(i).name for i in range(parts.type.num_fields)])


# -- file access ------------------------------------------------------------------------------

def _open_binary(path: Path):
    """A decompressing byte stream: gzip is recognised by its magic bytes, not the file name."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _input_stream(path: Path) -> pa.NativeFile:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return pa.input_stream(str(path), compression="gzip" if magic == b"\x1f\x8b" else None)


def _read_head(path: Path) -> bytes:
    """The first (decompressed) bytes; a gzip stream that is corrupt or cut short is an error."""
    try:
        raw = _open_binary(path)
        try:
            return raw.read(_SNIFF_BYTES)
        finally:
            raw.close()
    except (OSError, EOFError, zlib.error) as exc:
        raise CanLogError(f"{path}: cannot read (corrupt or truncated gzip?): {_one_line(exc)}") from None


def _first_line(path: Path, head: bytes | None = None) -> str:
    """The first line, decompressed and without a byte-order mark; an empty file is an error."""
    if head is None:
        head = _read_head(path)
    if not head.strip():
        raise CanLogError(f"{path}: empty file")
    line = re.split(rb"\r\n|\r|\n", head.removeprefix(b"\xef\xbb\xbf"), maxsplit=1)[0]
    return line.decode("utf-8", errors="replace")


def _read_csv(path: Path, limit_rows: int | None, header: bool, column_types: dict[str, pa.DataType],
              include: list[str] | None = None, column_names: list[str] | None = None,
              delimiter: str = ",", quoting: bool = True) -> tuple[pa.Table, list[int]]:
    """Stream CSV blocks (stopping once ``limit_rows`` are read); returns the table and dropped lines.

    Rows with the wrong column count go to an invalid-row handler, which records their line number
    (known because the reader runs single-threaded) and skips them; the caller decides whether that
    is an error.
    """
    malformed: list[int] = []

    def on_invalid(row) -> str:
        malformed.append(int(row.number) if row.number is not None and row.number >= 0 else -1)
        return "skip"

    on_invalid.quiet_on_bad_utf8 = True  # type: ignore[attr-defined]
    _install_unraisable_filter()

    # A header file read under positional names skips its header line; lines keep their numbers.
    read_opts = pcsv.ReadOptions(use_threads=False, block_size=_BLOCK_SIZE, column_names=column_names,
                                 skip_rows=1 if header and column_names else 0, autogenerate_column_names=False)
    parse_opts = pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False,
                                   ignore_empty_lines=False, invalid_row_handler=on_invalid)
    convert_opts = pcsv.ConvertOptions(column_types=column_types, include_columns=include, null_values=[""],
                                       strings_can_be_null=False, quoted_strings_can_be_null=False)
    batches: list[pa.RecordBatch] = []
    rows = 0
    try:
        with _input_stream(path) as stream:
            reader = pcsv.open_csv(stream, read_options=read_opts, parse_options=parse_opts,
                                   convert_options=convert_opts)
            schema = reader.schema
            for batch in _batches(reader):
                if limit_rows is not None and rows + batch.num_rows > limit_rows:
                    batch = batch.slice(0, limit_rows - rows)
                batches.append(batch)
                rows += batch.num_rows
                if limit_rows is not None and rows >= limit_rows:
                    break
    except pa.ArrowInvalid as exc:
        if "conversion error" in str(exc).lower():
            raise  # a typed column met text that is not of its type: the caller re-reads as text
        if "empty" in str(exc).lower():
            raise CanLogError(f"{path}: empty file") from None
        raise CanLogError(f"{path}: cannot parse: {_one_line(exc)}") from None
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise CanLogError(f"{path}: cannot read (corrupt or truncated gzip?): {_one_line(exc)}") from None
    if rows == 0 and not malformed:
        raise CanLogError(f"{path}: empty file (no data rows{' after the header' if header else ''})")
    table = pa.Table.from_batches(batches, schema=schema)
    return table, malformed


def _install_unraisable_filter() -> None:
    """Keep pyarrow from printing a traceback when a malformed row is not valid UTF-8.

    pyarrow decodes the row's text before calling the invalid-row handler; when that fails it prints
    the decode error as an "ignored" exception and then fails the read, which ``_read_csv`` reports
    as one ``CanLogError``. Only that event, from this module's handlers, is filtered; the hook is
    installed once and passes everything else on.
    """
    previous = sys.unraisablehook
    if getattr(previous, "can_log_filter", False):
        return

    def hook(unraisable) -> None:
        if not (getattr(unraisable.object, "quiet_on_bad_utf8", False)
                and isinstance(unraisable.exc_value, UnicodeDecodeError)):
            previous(unraisable)

    hook.can_log_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _batches(reader: pcsv.CSVStreamingReader) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def _read_lines(path: Path, limit_rows: int | None) -> tuple[pa.Array, list[int]]:
    """Every line of a headerless text layout as one string column (a never-used delimiter)."""
    try:
        table, malformed = _read_csv(path, limit_rows, header=False, column_types={"line": pa.string()},
                                     column_names=["line"], delimiter="\x1f", quoting=False)
    except pa.ArrowInvalid as exc:
        raise CanLogError(f"{path}: not valid UTF-8 text: {_one_line(exc)}") from None
    return combine(table.column("line")), malformed


# -- small helpers ----------------------------------------------------------------------------

def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """A library's error text on one line: it may hold newlines or the bytes of a whole row."""
    return shorten(" ".join(str(exc).split()), limit)
