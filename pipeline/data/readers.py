"""Raw CAN log readers: four on-disk layouts in, one columnar ``CanLog`` out.

Every layout is parsed column-wise (pyarrow CSV/Parquet readers, pyarrow.compute string kernels
and numpy), never with a Python loop per row, because full captures hold tens of millions of
frames. Hex fields are decoded by padding them to a fixed width, viewing the string buffer as a
``uint8`` matrix and mapping ASCII to nibbles through a 256-entry lookup table.

Layouts (``DataConfig.layout``; ``auto`` detects it per file from its first line):

    can_train_and_test  CSV/.csv.gz with header ``timestamp,arbitration_id,data_field,attack``
    car_hacking_csv     headerless ``timestamp,id,dlc,b0,..,b{dlc-1},R|T`` (short rows when dlc < 8)
    car_hacking_txt     OTIDS ``Timestamp: t  ID: 0350  000  DLC: 8  05 28 ...`` (all label 0)
    parquet             columns timestamp, arbitration_id (hex string or int), data_field, attack

A bad row raises ``CanLogError`` naming the file, the 1-based line and the reason, or with
``bad_rows="skip"`` is dropped and counted in ``CanLog.bad_rows``. Rows keep file order.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

LAYOUTS = ("can_train_and_test", "car_hacking_csv", "car_hacking_txt", "parquet")
CTT_COLUMNS = ("timestamp", "arbitration_id", "data_field", "attack")
MAX_ID_CHARS = 8
"""29-bit extended ids need 8 hex digits; anything longer is not a CAN id."""
MAX_PAYLOAD_BYTES = 8
_BLOCK_SIZE = 4 << 20
_SNIFF_BYTES = 1 << 16

_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
"""ASCII byte -> nibble value; 255 marks a character that is not a hex digit."""
_PAIR = np.full(1 << 16, 0xFFFF, dtype=np.uint16)
_valid = np.flatnonzero(_NIBBLE != 255)
_hi, _lo = np.meshgrid(_valid, _valid, indexing="ij")
# A uint16 view of two ASCII digits is little-endian: the first digit is the low byte.
_PAIR[_hi | (_lo << 8)] = _NIBBLE[_hi].astype(np.uint16) * 16 + _NIBBLE[_lo]
del _valid, _hi, _lo
"""Two ASCII hex digits (as a little-endian uint16) -> byte value; 0xFFFF marks an invalid pair."""

_CH_LINE = (r"^\s*(?P<ts>[^,]*?)\s*,\s*(?P<id>[^,]*?)\s*,\s*(?P<dlc>[^,]*?)\s*,"
            r"(?P<data>(?:[^,]*,)*?)\s*(?P<flag>[^,]*?)\s*$")
_CH_DATA_OK = r"^(?:\s*[0-9A-Fa-f]{2}\s*,)*$"
_TXT_LINE = (r"^\s*Timestamp:\s*(?P<ts>\S+)\s+ID:\s*(?P<id>\S+)\s+(?P<rtr>\S+)\s+DLC:\s*(?P<dlc>\S+)"
             r"(?P<data>.*?)\s*$")
_TXT_DATA_OK = r"^(?:\s+[0-9A-Fa-f]{2})*$"
_FLOAT_OK = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


class CanLogError(ValueError):
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

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def slice(self, start: int, stop: int) -> "CanLog":
        """Rows ``start:stop`` as views (no copy)."""
        return CanLog(self.ts[start:stop], self.can_id[start:stop], self.dlc[start:stop],
                      self.payload[start:stop], self.label[start:stop], self.path, self.bad_rows, self.layout)

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
    malformed: list[int]
    """1-based lines the CSV tokenizer dropped for a wrong column count."""
    skip: bool

    def decode(self) -> CanLog:
        log = _DECODERS[self.layout](self.path, self.columns, self.malformed, self.skip)
        log.layout = self.layout
        return log


def read_can_log(path: str | os.PathLike, layout: str = "auto", limit_rows: int | None = None,
                 bad_rows: str = "error") -> CanLog:
    """Read one raw capture into columns; see the module docstring for layouts and error rules."""
    return load_can_log(path, layout, limit_rows, bad_rows).decode()


def load_can_log(path: str | os.PathLike, layout: str = "auto", limit_rows: int | None = None,
                 bad_rows: str = "error") -> RawCanLog:
    """The first half of ``read_can_log``: detect the layout and tokenize the file."""
    path = Path(path)
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: ['auto', *{list(LAYOUTS)}]")
    if not path.is_file():
        raise CanLogError(f"{path}: no such file")
    if layout == "auto":
        layout = detect_layout(path)
    columns, malformed = _LOADERS[layout](path, limit_rows)
    return RawCanLog(path, layout, columns, malformed, bad_rows == "skip")


def detect_layout(path: str | os.PathLike) -> str:
    """The layout of ``path`` judged from its first line (or the Parquet magic bytes)."""
    path = Path(path)
    raw = _open_binary(path)
    try:
        head = raw.read(_SNIFF_BYTES)
    finally:
        raw.close()
    if head[:4] == b"PAR1":
        return "parquet"
    first = _first_line(path, head)
    text = first.strip()
    if text.lower().startswith("timestamp:"):
        return "car_hacking_txt"
    header = [c.strip().strip('"').lower() for c in text.split(",")]
    if "timestamp" in header or "arbitration_id" in header:
        return "can_train_and_test"
    parts = header
    if len(parts) >= 4 and _is_float(parts[0]) and _is_hex(parts[1]) and parts[2].isdigit():
        return "car_hacking_csv"
    raise CanLogError(
        f"{path}: line 1: not a recognised CAN log: expected a header "
        f"'{','.join(CTT_COLUMNS)}', a Car-Hacking row 'timestamp,id,dlc,b0..,R|T' or an OTIDS line "
        f"'Timestamp: t ID: 0316 000 DLC: 8 ...'; found {_shorten(first)!r}"
    )


# -- layout readers --------------------------------------------------------------------------

def _load_can_train_and_test(path: Path, limit_rows: int | None) -> tuple[pa.Table, list[int]]:
    header = [c.strip().strip('"') for c in _first_line(path).strip().split(",")]
    missing = [c for c in CTT_COLUMNS if c not in header]
    if missing:
        raise CanLogError(f"{path}: line 1: missing column(s) {missing}; header is {header} "
                          f"(expected {list(CTT_COLUMNS)})")
    fast_types = {"timestamp": pa.float64(), "arbitration_id": pa.string(), "data_field": pa.string(),
                  "attack": pa.string()}
    try:
        table, malformed = _read_csv(path, limit_rows, header=True, column_types=fast_types,
                                     include=list(CTT_COLUMNS))
    except pa.ArrowInvalid:
        # A timestamp that is not a number: re-read as text to find and name its line.
        try:
            table, malformed = _read_csv(path, limit_rows, header=True,
                                         column_types={c: pa.string() for c in CTT_COLUMNS},
                                         include=list(CTT_COLUMNS))
        except pa.ArrowInvalid as exc:
            raise CanLogError(f"{path}: not valid UTF-8 text: {exc}") from None
    return table, malformed


def _decode_can_train_and_test(path: Path, table: pa.Table, malformed: list[int], skip: bool) -> CanLog:
    checks = _Checks(len(table), _blank_rows(table))
    ts = _parse_float(table.column("timestamp"), checks, "timestamp")
    can_id = _parse_hex_id(table.column("arbitration_id"), checks)
    payload, dlc = _parse_hex_payload(table.column("data_field"), checks, "data_field")
    label = _parse_flag(table.column("attack"), {"0": 0, "1": 1}, checks, "attack")
    return _finish(path, ts, can_id, dlc, payload, label, checks, malformed, header_lines=1, skip=skip)


def _decode_car_hacking_csv(path: Path, lines: pa.Array, malformed: list[int], skip: bool) -> CanLog:
    checks = _Checks(len(lines), _lengths(lines) == 0)
    parts = pc.extract_regex(lines, _CH_LINE)
    structured = np.asarray(parts.is_valid(), dtype=bool)
    checks.add(~structured, lambda i: "malformed row: expected 'timestamp,id,dlc,b0,..,b{dlc-1},R|T', "
                                      f"found {_shorten(lines[i].as_py())!r}")
    parts = _fill_invalid(parts, structured)
    data = parts.field("data")
    data_ok = np.asarray(pc.match_substring_regex(data, _CH_DATA_OK).to_numpy(zero_copy_only=False), dtype=bool)
    checks.add(~data_ok, lambda i: f"payload bytes must be two-digit hex values, found {data[i].as_py()!r}")
    hexdata = pc.if_else(pa.array(data_ok), pc.replace_substring_regex(data, r"[\s,]", ""), "")
    return _from_text_fields(path, parts, hexdata, checks, malformed, skip, flags={"R": 0, "T": 1})


def _decode_car_hacking_txt(path: Path, lines: pa.Array, malformed: list[int], skip: bool) -> CanLog:
    checks = _Checks(len(lines), _lengths(lines) == 0)
    parts = pc.extract_regex(lines, _TXT_LINE)
    structured = np.asarray(parts.is_valid(), dtype=bool)
    checks.add(~structured, lambda i: "malformed line: expected 'Timestamp: t ID: hex rtr DLC: n b0 b1 ..', "
                                      f"found {_shorten(lines[i].as_py())!r}")
    parts = _fill_invalid(parts, structured)
    data = parts.field("data")
    data_ok = np.asarray(pc.match_substring_regex(data, _TXT_DATA_OK).to_numpy(zero_copy_only=False), dtype=bool)
    checks.add(~data_ok, lambda i: f"payload bytes must be two-digit hex values, found {data[i].as_py().strip()!r}")
    hexdata = pc.if_else(pa.array(data_ok), pc.replace_substring_regex(data, r"\s", ""), "")
    # A remote (RTR) frame requests data: its DLC is the length asked for and it carries no bytes.
    remote = ~np.asarray(pc.equal(pc.ascii_ltrim(parts.field("rtr"), "0"), "").to_numpy(zero_copy_only=False),
                         dtype=bool)
    return _from_text_fields(path, parts, hexdata, checks, malformed, skip, flags=None, remote=remote)


def _load_parquet(path: Path, limit_rows: int | None) -> tuple[pa.Table, list[int]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CanLogError(f"{path}: not a readable Parquet file: {exc}") from None
    names = pf.schema_arrow.names
    missing = [c for c in CTT_COLUMNS if c not in names]
    if missing:
        raise CanLogError(f"{path}: missing column(s) {missing}; columns are {names} (expected {list(CTT_COLUMNS)})")
    batches, rows = [], 0
    for batch in pf.iter_batches(batch_size=1 << 16, columns=list(CTT_COLUMNS)):
        if limit_rows is not None and rows + batch.num_rows > limit_rows:
            batch = batch.slice(0, limit_rows - rows)
        batches.append(batch)
        rows += batch.num_rows
        if limit_rows is not None and rows >= limit_rows:
            break
    table = pa.Table.from_batches(batches, schema=pa.schema([pf.schema_arrow.field(c) for c in CTT_COLUMNS]))
    if table.num_rows == 0:
        raise CanLogError(f"{path}: empty file (no rows)")
    return table, []


def _decode_parquet(path: Path, table: pa.Table, malformed: list[int], skip: bool) -> CanLog:
    checks = _Checks(table.num_rows)
    ts = _parse_float(table.column("timestamp"), checks, "timestamp")
    ids = _combine(table.column("arbitration_id"))
    if pa.types.is_integer(ids.type):
        values = np.asarray(ids.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        checks.add((values < 0) | (values >= 1 << 32), lambda i: f"arbitration_id {ids[i].as_py()!r} is not a CAN id")
        can_id = np.clip(values, 0, (1 << 32) - 1).astype(np.uint32)
    else:
        can_id = _parse_hex_id(ids, checks)
    payload, dlc = _parse_hex_payload(table.column("data_field"), checks, "data_field")
    attack = _combine(table.column("attack"))
    if pa.types.is_string(attack.type) or pa.types.is_large_string(attack.type):
        label = _parse_flag(attack, {"0": 0, "1": 1}, checks, "attack")
    else:
        values = np.asarray(pc.cast(attack, pa.float64()).fill_null(-1).to_numpy(zero_copy_only=False))
        checks.add((values != 0) & (values != 1), lambda i: f"attack must be 0 or 1, found {attack[i].as_py()!r}")
        label = (values == 1).astype(np.uint8)
    return _finish(path, ts, can_id, dlc, payload, label, checks, [], header_lines=0, skip=skip, unit="row")


_LOADERS: dict[str, Callable[[Path, int | None], tuple[pa.Table | pa.Array, list[int]]]] = {
    "can_train_and_test": _load_can_train_and_test, "car_hacking_csv": lambda p, n: _read_lines(p, n),
    "car_hacking_txt": lambda p, n: _read_lines(p, n), "parquet": _load_parquet,
}
_DECODERS: dict[str, Callable[[Path, pa.Table | pa.Array, list[int], bool], CanLog]] = {
    "can_train_and_test": _decode_can_train_and_test, "car_hacking_csv": _decode_car_hacking_csv,
    "car_hacking_txt": _decode_car_hacking_txt, "parquet": _decode_parquet,
}


# -- shared pieces ----------------------------------------------------------------------------

def _from_text_fields(path: Path, parts: pa.StructArray, hexdata: pa.Array, checks: "_Checks",
                      malformed: list[int], skip: bool, flags: dict[str, int] | None,
                      remote: np.ndarray | None = None) -> CanLog:
    """Decode the regex-extracted fields of the two headerless layouts (no flag column: label 0).

    ``remote`` marks remote frames, which may state a DLC without carrying payload bytes.
    """
    ts = _parse_float(parts.field("ts"), checks, "timestamp")
    can_id = _parse_hex_id(parts.field("id"), checks)
    dlc = _parse_flag(parts.field("dlc"), {str(d): d for d in range(MAX_PAYLOAD_BYTES + 1)}, checks, "dlc")
    payload, nbytes = _parse_hex_payload(hexdata, checks, "payload")
    mismatch = (dlc != nbytes) & ~checks.bad
    if remote is not None:
        mismatch &= ~(remote & (nbytes == 0))
    checks.add(mismatch, lambda i: f"DLC {int(dlc[i])} but {int(nbytes[i])} payload byte(s)")
    if flags is None:
        label = np.zeros(len(ts), dtype=np.uint8)
    else:
        label = _parse_flag(parts.field("flag"), flags, checks, "flag")
    return _finish(path, ts, can_id, dlc, payload, label, checks, malformed, header_lines=0, skip=skip)


class _Checks:
    """Row validity masks with the first reason for each; raised or dropped at the end.

    Blank lines are neither data nor errors (files often end with one): they are dropped silently.
    """

    def __init__(self, n: int, blank: np.ndarray | None = None):
        self.blank = blank if blank is not None else np.zeros(n, dtype=bool)
        self.bad = np.zeros(n, dtype=bool)
        self.first: list[tuple[int, Callable[[int], str]]] = []

    def add(self, mask: np.ndarray, reason: Callable[[int], str]) -> None:
        """Record rows in ``mask`` as bad; ``reason(i)`` words the problem of row ``i`` (lazily)."""
        fresh = mask & ~self.bad & ~self.blank
        if fresh.any():
            self.first.append((int(np.argmax(fresh)), reason))
            self.bad |= fresh


def _finish(path: Path, ts: np.ndarray, can_id: np.ndarray, dlc: np.ndarray, payload: np.ndarray,
            label: np.ndarray, checks: _Checks, malformed: list[int], header_lines: int, skip: bool,
            unit: str = "line") -> CanLog:
    """Raise on the earliest bad row, or drop bad rows (skip mode) and build the log."""
    n_bad = int(checks.bad.sum()) + len(malformed)
    if n_bad and not skip:
        candidates = [(_line_of_row(i, malformed, header_lines), reason(i)) for i, reason in checks.first]
        if malformed:
            candidates.append((min(malformed), "malformed row: wrong number of columns"))
        line, reason = min(candidates, key=lambda c: c[0])
        raise CanLogError(f"{path}: {unit} {line}: {reason} (set data.bad_rows=skip to drop bad rows)")
    drop = checks.bad | checks.blank
    if drop.any():
        keep = ~drop
        ts, can_id, dlc, payload, label = ts[keep], can_id[keep], dlc[keep], payload[keep], label[keep]
    return CanLog(np.ascontiguousarray(ts, np.float64), np.ascontiguousarray(can_id, np.uint32),
                  np.ascontiguousarray(dlc, np.uint8), np.ascontiguousarray(payload, np.uint8),
                  np.ascontiguousarray(label, np.uint8), path, n_bad)


def _line_of_row(row: int, malformed: list[int], header_lines: int) -> int:
    """1-based file line of parsed row ``row``, given the lines the CSV reader dropped."""
    line = row + 1 + header_lines
    for dropped in sorted(malformed):
        if dropped <= line:
            line += 1
    return line


def _parse_float(column: pa.ChunkedArray | pa.Array, checks: _Checks, name: str) -> np.ndarray:
    arr = _combine(column)
    if not pa.types.is_floating(arr.type) and not pa.types.is_integer(arr.type):
        text = arr.fill_null("")
        ok = np.asarray(pc.match_substring_regex(text, _FLOAT_OK).to_numpy(zero_copy_only=False), dtype=bool)
        checks.add(~ok, lambda i: f"{name} {text[i].as_py()!r} is not a number")
        arr = pc.cast(pc.if_else(pa.array(ok), text, "0"), pa.float64())
    values = np.asarray(pc.cast(arr, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), np.float64)
    checks.add(~np.isfinite(values), lambda i: f"{name} is empty" if arr[i].as_py() is None
               else f"{name} {arr[i].as_py()!r} is not a finite number")
    return values


def _parse_hex_id(column: pa.ChunkedArray | pa.Array, checks: _Checks) -> np.ndarray:
    text = _combine(column).fill_null("")
    lengths = _lengths(text)
    empty = lengths == 0
    too_long = lengths > MAX_ID_CHARS
    checks.add(_non_ascii(text, lengths), lambda i: f"arbitration id {text[i].as_py()!r} is not hexadecimal")
    checks.add(empty, lambda i: "empty arbitration id")
    checks.add(too_long, lambda i: f"arbitration id {text[i].as_py()!r} longer than {MAX_ID_CHARS} hex digits")
    width = int(min(max(lengths.max(initial=1), 1), MAX_ID_CHARS))
    width += width % 2
    octets, ok = _hex_bytes(text, lengths, width, pad_left=True)
    checks.add(~ok & ~too_long & ~empty, lambda i: f"arbitration id {text[i].as_py()!r} is not hexadecimal")
    value = np.zeros(len(text), dtype=np.uint32)
    for j in range(octets.shape[1]):
        value <<= np.uint32(8)
        value |= octets[:, j]
    return value


def _parse_hex_payload(column: pa.ChunkedArray | pa.Array, checks: _Checks, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Payload bytes [N, 8] (zero-padded) and their count, from hex strings of 0-16 digits."""
    text = _combine(column).fill_null("")
    lengths = _lengths(text)
    too_long = lengths > 2 * MAX_PAYLOAD_BYTES
    odd = (lengths % 2 == 1) & ~too_long
    checks.add(_non_ascii(text, lengths), lambda i: f"{name} {_shorten(text[i].as_py())!r} is not hexadecimal")
    checks.add(too_long, lambda i: f"{name} {_shorten(text[i].as_py())!r} has more than {MAX_PAYLOAD_BYTES} bytes")
    checks.add(odd, lambda i: f"{name} {text[i].as_py()!r} has an odd number of hex digits")
    width = int(min(lengths.max(initial=0), 2 * MAX_PAYLOAD_BYTES))
    width += width % 2
    if width == 2 * MAX_PAYLOAD_BYTES:
        payload, ok = _hex_bytes(text, lengths, width, pad_left=False)
    else:
        payload = np.zeros((len(text), MAX_PAYLOAD_BYTES), dtype=np.uint8)
        ok = np.ones(len(text), dtype=bool)
        if width:
            payload[:, : width // 2], ok = _hex_bytes(text, lengths, width, pad_left=False)
    checks.add(~ok & ~too_long, lambda i: f"{name} {text[i].as_py()!r} is not hexadecimal")
    dlc = np.minimum(lengths // 2, MAX_PAYLOAD_BYTES).astype(np.uint8)
    return payload, dlc


def _hex_bytes(text: pa.Array, lengths: np.ndarray, width: int, pad_left: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, width/2] byte values of ``text`` padded with '0' to ``width`` digits, and a row ok mask.

    The padded string buffer is viewed as uint16 digit pairs and decoded through a 64K-entry table in
    one gather. Rows too long or not ASCII are blanked first so every padded row has exactly ``width``
    bytes; the caller reports them.
    """
    n = len(text)
    unfit = lengths > width
    if unfit.any() or not _all_ascii(text, lengths):
        unfit |= ~np.asarray(pc.string_is_ascii(text).to_numpy(zero_copy_only=False), dtype=bool)
        text = pc.if_else(pa.array(unfit), "", text)
    padded = (pc.ascii_lpad if pad_left else pc.ascii_rpad)(text, width, "0")
    pairs = _fixed_width_view(padded, width).view(np.uint16)
    decoded = _PAIR[pairs]
    if n and int(decoded.max()) > 255:
        ok = ~unfit & (decoded <= 255).all(axis=1)
        decoded[decoded > 255] = 0
    else:
        ok = ~unfit
    return decoded.astype(np.uint8), ok


def _non_ascii(text: pa.Array, lengths: np.ndarray) -> np.ndarray:
    if _all_ascii(text, lengths):
        return np.zeros(len(text), dtype=bool)
    return ~np.asarray(pc.string_is_ascii(text).to_numpy(zero_copy_only=False), dtype=bool)


def _all_ascii(text: pa.Array, lengths: np.ndarray) -> bool:
    """Cheap test over the whole character buffer at once: ASCII bytes are all below 0x80."""
    chars = _char_buffer(text)
    return chars.size == 0 or int(chars.max()) < 0x80


def _char_buffer(arr: pa.Array) -> np.ndarray:
    """The characters of every string of ``arr``, back to back, as uint8 (no copy)."""
    n = len(arr)
    if n == 0 or arr.buffers()[2] is None:
        return np.zeros(0, np.uint8)
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=offset_type)[arr.offset: arr.offset + n + 1]
    return np.frombuffer(arr.buffers()[2], dtype=np.uint8)[int(offsets[0]):int(offsets[-1])]


def _fixed_width_view(arr: pa.Array, width: int) -> np.ndarray:
    """The character buffer of an array whose strings all have ``width`` bytes, as uint8 [N, width]."""
    chars = _char_buffer(arr)
    if chars.size != len(arr) * width:
        raise AssertionError("padded strings are not of uniform width")
    return chars.reshape(len(arr), width)


def _parse_flag(column: pa.ChunkedArray | pa.Array, mapping: dict[str, int], checks: _Checks, name: str) -> np.ndarray:
    """Map short categorical text ('0'/'1', 'R'/'T', a DLC digit) to uint8 codes; others are bad."""
    text = _combine(column).fill_null("")
    if all(len(key) == 1 for key in mapping) and _char_buffer(text).size == len(text) \
            and int(pc.min(pc.binary_length(text)).as_py() or 0) == 1:
        # Every value is one character: map the character buffer through a table.
        table = np.full(256, 255, dtype=np.uint8)
        for key, value in mapping.items():
            table[ord(key)] = value
        out = table[_char_buffer(text)]
        checks.add(out == 255, lambda i: f"{name} must be one of {'/'.join(mapping)}, found {text[i].as_py()!r}")
        out[out == 255] = 0
        return out
    out = np.zeros(len(text), dtype=np.uint8)
    known = np.zeros(len(text), dtype=bool)
    for key, value in mapping.items():
        hit = np.asarray(pc.equal(text, key).to_numpy(zero_copy_only=False), dtype=bool)
        out[hit] = value
        known |= hit
    allowed = "/".join(mapping)
    checks.add(~known, lambda i: f"{name} must be one of {allowed}, found {text[i].as_py()!r}")
    return out


def _blank_rows(table: pa.Table) -> np.ndarray:
    """Rows whose every field is empty or null: what a blank line parses to."""
    blank = np.ones(table.num_rows, dtype=bool)
    for column in table.columns:
        arr = _combine(column)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            blank &= np.asarray(pc.fill_null(pc.equal(pc.binary_length(arr), 0), True)
                                .to_numpy(zero_copy_only=False), dtype=bool)
        else:
            blank &= np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if not blank.any():
            break
    return blank


def _lengths(text: pa.Array) -> np.ndarray:
    return np.asarray(pc.binary_length(text).to_numpy(zero_copy_only=False), dtype=np.int64)


def _combine(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


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


def _first_line(path: Path, head: bytes | None = None) -> str:
    """The first line, decompressed; an empty file is an error."""
    if head is None:
        raw = _open_binary(path)
        try:
            head = raw.read(_SNIFF_BYTES)
        except (OSError, EOFError) as exc:
            raise CanLogError(f"{path}: cannot read: {exc}") from None
        finally:
            raw.close()
    if not head.strip():
        raise CanLogError(f"{path}: empty file")
    return head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")


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

    read_opts = pcsv.ReadOptions(use_threads=False, block_size=_BLOCK_SIZE, column_names=column_names,
                                 skip_rows=0, autogenerate_column_names=False)
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
        raise CanLogError(f"{path}: cannot parse: {exc}") from None
    if rows == 0 and not malformed:
        raise CanLogError(f"{path}: empty file (no data rows{' after the header' if header else ''})")
    table = pa.Table.from_batches(batches, schema=schema)
    return table, malformed


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
        raise CanLogError(f"{path}: not valid UTF-8 text: {exc}") from None
    return _combine(table.column("line")), malformed


# -- small helpers ----------------------------------------------------------------------------

def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)


def _shorten(text: str | None, limit: int = 80) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
