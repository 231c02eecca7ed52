"""Decoding the text columns of a raw CAN capture into a ``CanLog``, one decoder per layout.

The file-bound half of reading (``pipeline.can.data.readers.load_can_log``) hands over text columns:
one string per line for the headerless layouts, the timestamp, id, payload and label columns for
header CSV and Parquet. This is the compute-bound half: the headerless lines are split by regular
expressions (pyarrow.compute, never a Python loop per row), every field is decoded by
``pipeline.can.data.fields``, and the bad-row rules are applied.

A bad row raises ``CanLogError`` naming the file, the 1-based line (or Parquet row) and the reason,
or in skip mode is dropped and counted in ``CanLog.bad_rows``; rows the CSV tokenizer dropped for a
wrong column count are bad rows too. Blank lines are neither. Rows keep file order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.can.data.canlog import CanLog, CanLogError
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
    text_lengths,
    value_at,
)

_CH_LINE = (r"^\s*(?P<ts>[^,]*?)\s*,\s*(?P<id>[^,]*?)\s*,\s*(?P<dlc>[^,]*?)\s*,"
            r"(?P<data>(?:[^,]*,)*?)\s*(?P<flag>[^,]*?)\s*$")
_CH_DATA_OK = r"^(?:\s*[0-9A-Fa-f]{2}\s*,)*$"
_TXT_LINE = (r"^\s*Timestamp:\s*(?P<ts>\S+)\s+ID:\s*(?P<id>\S+)\s+(?P<rtr>\S+)\s+DLC:\s*(?P<dlc>\S+)"
             r"(?P<data>.*?)\s*$")
_TXT_DATA_OK = r"^(?:\s+[0-9A-Fa-f]{2})*$"


def decode_columns(layout: str, path: Path, columns: pa.Table | pa.Array, malformed: list[int],
                   skip: bool) -> CanLog:
    """The ``CanLog`` of one file's text columns in ``layout``; ``malformed``: 1-based dropped lines."""
    log = _DECODERS[layout](path, columns, malformed, skip)
    log.layout = layout
    return log


# -- layout decoders ---------------------------------------------------------------------------

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


def _decode_parquet(path: Path, table: pa.Table, malformed: list[int], skip: bool) -> CanLog:
    return _decode_table(path, table, malformed, skip, header_lines=0, unit="row")


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


# -- column helpers ----------------------------------------------------------------------------

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
