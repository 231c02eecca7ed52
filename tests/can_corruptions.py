"""Corrupted CAN logs for fuzzing the readers, shared by tests/test_reader_fuzz.py and bench/reader_fuzz.py.

An input is a clean small file of one case (a layout, possibly gzipped) plus a list of corruption
ops. An op is ``(name, where, which, blob)``: ``where`` in [0, 1) picks a position (a byte, a line),
``which`` an integer choice (a field, a value, a type), ``blob`` bytes to insert. The same ops are
drawn by hypothesis in the test (which shrinks a failure to a small op list) and by
``random.Random`` in the bench (thousands of inputs), and both judge the result with ``judge``.

The rule judged: reading a file gives either a valid ``CanLog`` (consistent lengths and dtypes) or
one ``CanLogError`` whose message names the file; never another exception.
"""
from __future__ import annotations

import gzip
import io
import random
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.can.data.readers import LAYOUTS, CanLog, CanLogError, read_can_log

Op = tuple[str, float, int, bytes]

CASES = ("header_csv", "header_csv_gz", "car_hacking_csv", "car_hacking_txt", "parquet")
"""Clean inputs; each is corrupted by ops from its own family plus the byte-level ones."""
LAYOUT_OF = {"header_csv": "can_train_and_test", "header_csv_gz": "can_train_and_test",
             "car_hacking_csv": "car_hacking_csv", "car_hacking_txt": "car_hacking_txt", "parquet": "parquet"}
SUFFIX = {"header_csv": ".csv", "header_csv_gz": ".csv.gz", "car_hacking_csv": ".csv", "car_hacking_txt": ".txt",
          "parquet": ".parquet"}

NASTY = ["", " ", "-1", "-0", "4294967296", "18446744073709551616", "9" * 30, "1e400", "-1e400", "nan", "inf",
         "-inf", "0x1F", "ZZ", "1F ", "\t7DF", "\u00e9", "\U0001F600", "1.5", "TRUE", "T", "R", "9", '"a,b"', '"',
         "A" * 70, "00" * 9, "0" * 9, "\x00", "\x7f", "\\N", "NULL", "0.0", "attack", "\r", "1,2", "DLC:"]
"""Field values that have broken, or could break, a reader."""

_HEADER_CSV = ("timestamp,arbitration_id,data_field,attack\n"
               "1513920477.249737,2A0,60006E1DCC04E300,0\n1513920477.25,081,,1\n1513920477.3,5,ab,0\n"
               "1513920477.4,1FFFFFFF,deadBEEF01,1\n1513920477.5,7DF,0102030405060708,0\n"
               "1513920477.6,316,0521,0\n")
_CAR_HACKING_CSV = ("1478198376.389427,0316,8,05,21,68,09,21,21,00,6f,R\n"
                    "1478198376.389636,018f,8,fe,5b,00,00,00,3c,00,00,T\n"
                    "1478198376.389864,0260,2,19,21,R\n"
                    "1478198376.389900,05f0,2,01,00,00,00,00,00,00,00,R\n"
                    "1478198376.390000,0000,0,T\n")
_CAR_HACKING_TXT = ("Timestamp: 1479121434.850202        ID: 0350    000    DLC: 8    05 28 84 66 6d 00 00 a2\n"
                    "Timestamp: 1479121434.850423        ID: 02c0    000    DLC: 8    14 00 00 00 00 00 00 00\n"
                    "Timestamp: 1479121434.851000        ID: 0000    100    DLC: 4\n"
                    "Timestamp: 1479121434.852000        ID: 0545    000    DLC: 3    d8 00 8d\n")


def clean_table() -> pa.Table:
    """The clean Parquet input, as the public copies publish it (uint32 id, extra source_file)."""
    return pa.table({"timestamp": pa.array([1.5, 2.5, 3.5, 4.5, 5.5]),
                     "id": pa.array([0x1F4, 0x81, 0x1FFFFFFF, 0, 0x7DF], pa.uint32()),
                     "data_field": ["0102", "", "FFEE", "0102030405060708", "aa"],
                     "label": pa.array([0, 1, 0, 1, 0], pa.int8()),
                     "source_file": ["a.csv"] * 5})


# -- ops on text lines -------------------------------------------------------------------------

def _pick(n: int, where: float) -> int:
    return min(int(where * n), n - 1) if n else 0


def _lines_op(fn: Callable[[list[bytes], int, int, bytes], list[bytes]]) -> Callable[[bytes, float, int, bytes], bytes]:
    def op(data: bytes, where: float, which: int, blob: bytes) -> bytes:
        lines = data.split(b"\n")
        return b"\n".join(fn(lines, _pick(len(lines), where), which, blob))
    return op


def _set_field(lines: list[bytes], i: int, which: int, blob: bytes) -> list[bytes]:
    fields = lines[i].split(b",")
    fields[which % len(fields)] = NASTY[which % len(NASTY)].encode()
    return lines[:i] + [b",".join(fields)] + lines[i + 1:]


def _drop_field(lines: list[bytes], i: int, which: int, blob: bytes) -> list[bytes]:
    fields = lines[i].split(b",")
    del fields[which % len(fields)]
    return lines[:i] + [b",".join(fields)] + lines[i + 1:]


def _extra_field(lines: list[bytes], i: int, which: int, blob: bytes) -> list[bytes]:
    return lines[:i] + [lines[i] + b"," + NASTY[which % len(NASTY)].encode()] + lines[i + 1:]


def _empty_lines(lines: list[bytes], i: int, which: int, blob: bytes) -> list[bytes]:
    return lines[:i] + [b""] * (1 + which % 3) + lines[i:]


def _duplicate_line(lines: list[bytes], i: int, which: int, blob: bytes) -> list[bytes]:
    return lines[:i] + [lines[i]] * (1 + which % 50) + lines[i:]


def _space_field(lines: list[bytes], i: int, which: int, blob: bytes) -> list[bytes]:
    fields = lines[i].split(b",")
    k = which % len(fields)
    fields[k] = [b" ", b"\t", b"\r", b" \t"][which % 4] + fields[k] + [b"\t", b" ", b""][which % 3]
    return lines[:i] + [b",".join(fields)] + lines[i + 1:]


def _truncate(data: bytes, where: float, which: int, blob: bytes) -> bytes:
    return data[: _pick(len(data) + 1, where)]


def _insert(data: bytes, where: float, blob: bytes) -> bytes:
    k = _pick(len(data) + 1, where)
    return data[:k] + blob + data[k:]


def _junk(data: bytes, where: float, which: int, blob: bytes) -> bytes:
    return _insert(data, where, blob or bytes([which % 256]))


def _nul(data: bytes, where: float, which: int, blob: bytes) -> bytes:
    return _insert(data, where, b"\x00" * (1 + which % 4))


def _bom(data: bytes, where: float, which: int, blob: bytes) -> bytes:
    return b"\xef\xbb\xbf" + data


def _crlf(data: bytes, where: float, which: int, blob: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def _mixed_newlines(data: bytes, where: float, which: int, blob: bytes) -> bytes:
    lines = data.split(b"\n")
    ends = [b"\n", b"\r\n", b"\r"]
    return b"".join(line + ends[(which + i) % 3] for i, line in enumerate(lines[:-1])) + lines[-1]


def _flip(data: bytes, where: float, which: int, blob: bytes) -> bytes:
    if not data:
        return data
    k = _pick(len(data), where)
    return data[:k] + bytes([data[k] ^ (1 + which % 255)]) + data[k + 1:]


TEXT_OPS: dict[str, Callable[[bytes, float, int, bytes], bytes]] = {
    "set_field": _lines_op(_set_field), "drop_field": _lines_op(_drop_field),
    "extra_field": _lines_op(_extra_field), "empty_lines": _lines_op(_empty_lines),
    "duplicate_line": _lines_op(_duplicate_line), "space_field": _lines_op(_space_field),
    "truncate": _truncate, "junk": _junk, "nul": _nul, "bom": _bom, "crlf": _crlf,
    "mixed_newlines": _mixed_newlines,
}
"""Ops on the text of the text layouts (before compression)."""
BYTE_OPS: dict[str, Callable[[bytes, float, int, bytes], bytes]] = {
    "file_truncate": _truncate, "file_junk": _junk, "file_flip": _flip,
}
"""Ops on the bytes as stored (after compression / Parquet encoding), for every case."""
GZIP_OPS = ("gzip_cut", "gzip_wrap")
"""Compress a text input (even one not meant to be gzipped) and cut the stream short, or keep it whole."""


# -- ops on the Parquet table ------------------------------------------------------------------

def _column(table: pa.Table, which: int) -> str:
    return table.column_names[which % min(4, table.num_columns)]


def _cast_to(table: pa.Table, which: int, values: Callable[[int], pa.Array]) -> pa.Table:
    name = _column(table, which)
    return table.set_column(table.column_names.index(name), name, values(table.num_rows))


_WRONG_VALUES: list[Callable[[int], pa.Array]] = [
    lambda n: pa.array(np.arange(n) + 0.5),
    lambda n: pa.array(-np.arange(n, dtype=np.int64) - 1),
    lambda n: pa.array(np.full(n, (1 << 63) + 5, dtype=np.uint64)),
    lambda n: pa.array([str(i * 7) for i in range(n)]),
    lambda n: pa.array([i % 2 == 0 for i in range(n)]),
    lambda n: pa.array([None] * n, pa.string()),
    lambda n: pa.array([None] * n),
    lambda n: pa.array([[i] for i in range(n)]),
    lambda n: pa.array([b"\x01\x02"] * n, pa.binary()),
    lambda n: pa.array([NASTY[i % len(NASTY)] for i in range(n)]),
    lambda n: pa.array(np.arange(n, dtype=np.int64) * 10**15, pa.timestamp("us")),
    lambda n: pa.array([0.5] * n),
    lambda n: pa.array([["attack", "normal", "x"][i % 3] for i in range(n)]).dictionary_encode(),
    lambda n: pa.array([float("nan")] * n),
    lambda n: pa.array([{"a": i} for i in range(n)]),
    lambda n: pa.array([1 << 40] * n, pa.int64()),
]


def _parquet_op(name: str, table: pa.Table, where: float, which: int) -> pa.Table:
    if name == "wrong_type":
        return _cast_to(table, which, _WRONG_VALUES[(which // 4) % len(_WRONG_VALUES)])
    if name == "null_values" and table.num_rows:
        col = table.column_names.index(_column(table, which))
        values = table.column(col).to_pylist()
        values[_pick(len(values), where)] = None
        return table.set_column(col, table.column_names[col], pa.array(values, table.column(col).type))
    if name == "rename":
        names = list(table.column_names)
        names[which % len(names)] = NASTY[which % len(NASTY)] or "x"
        return table.rename_columns(names)
    if name == "drop_column":
        return table.remove_column(which % table.num_columns) if table.num_columns > 1 else table
    if name == "duplicate_column":
        name_ = _column(table, which)
        return table.append_column(name_, table.column(table.column_names.index(name_)))
    if name in ("null_values", "empty"):
        return table.slice(0, 0)
    if name == "many_rows":
        return pa.concat_tables([table] * (2 + which % 100)).combine_chunks()
    raise KeyError(name)


PARQUET_OPS = ("wrong_type", "null_values", "rename", "drop_column", "duplicate_column", "empty", "many_rows")


# -- building and judging an input -------------------------------------------------------------

def ops_for(case: str) -> tuple[str, ...]:
    """Op names that apply to ``case``."""
    family = PARQUET_OPS if case == "parquet" else tuple(TEXT_OPS) + GZIP_OPS
    return family + tuple(BYTE_OPS)


def build(case: str, ops: list[Op]) -> bytes:
    """The bytes of ``case`` after applying ``ops`` in order (each at its own level)."""
    gz = case == "header_csv_gz"
    if case == "parquet":
        table = clean_table()
        for name, where, which, _ in ops:
            if name in PARQUET_OPS:
                table = _parquet_op(name, table, where, which)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        data = sink.getvalue()
    else:
        data = {"header_csv": _HEADER_CSV, "header_csv_gz": _HEADER_CSV, "car_hacking_csv": _CAR_HACKING_CSV,
                "car_hacking_txt": _CAR_HACKING_TXT}[case].encode()
        for name, where, which, blob in ops:
            if name in TEXT_OPS:
                data = TEXT_OPS[name](data, where, which, blob)
        cut = [where for name, where, _, _ in ops if name == "gzip_cut"]
        if gz or cut or any(name == "gzip_wrap" for name, *_ in ops):
            data = gzip.compress(data, mtime=0)
        if cut:
            data = data[: _pick(len(data), cut[0])]
    for name, where, which, blob in ops:
        if name in BYTE_OPS:
            data = BYTE_OPS[name](data, where, which, blob)
    return data


class RuleBroken(AssertionError):
    """A reader answered a corrupted input with something other than a valid log or one named error."""


def judge(path: Path, layout: str = "auto", bad_rows: str = "error", limit_rows: int | None = None) -> str:
    """'valid' or 'error' if reading ``path`` keeps the rule; raises ``RuleBroken`` otherwise."""
    try:
        log = read_can_log(path, layout=layout, bad_rows=bad_rows, limit_rows=limit_rows)
    except CanLogError as exc:
        message = str(exc)
        if str(path) not in message or "\n" in message:
            raise RuleBroken(f"error does not name the file on one line: {message!r}") from None
        return "error"
    except Exception:  # noqa: BLE001 - any other exception is exactly what this judge reports
        raise RuleBroken(f"unexpected exception:\n{traceback.format_exc()}") from None
    problems = check_log(log, bad_rows)
    if limit_rows is not None and len(log) > limit_rows:
        problems.append(f"{len(log)} rows read with limit_rows={limit_rows}")
    if problems:
        raise RuleBroken(f"inconsistent log: {problems}")
    return "valid"


def check_log(log: CanLog, bad_rows: str) -> list[str]:
    """What is wrong with a log that was returned (empty when nothing)."""
    n = len(log)
    expected = {"ts": (np.float64, (n,)), "can_id": (np.uint32, (n,)), "dlc": (np.uint8, (n,)),
                "payload": (np.uint8, (n, 8)), "label": (np.uint8, (n,))}
    problems = [f"{name}: {getattr(log, name).dtype}{getattr(log, name).shape}, expected {dtype.__name__}{shape}"
                for name, (dtype, shape) in expected.items()
                if getattr(log, name).dtype != dtype or getattr(log, name).shape != shape]
    if problems:
        return problems
    if not np.isfinite(log.ts).all():
        problems.append("non-finite timestamp")
    if (log.dlc > 8).any():
        problems.append("dlc above 8")
    if (log.label > 1).any():
        problems.append("label other than 0/1")
    if (log.payload * (np.arange(8) >= log.dlc[:, None])).any():
        problems.append("payload bytes past the DLC")
    if bad_rows == "error" and log.bad_rows:
        problems.append(f"{log.bad_rows} bad rows counted in error mode")
    if log.layout not in LAYOUTS or not 0 <= log.padded_rows <= n or log.bad_rows < 0:
        problems.append(f"layout {log.layout!r}, padded_rows {log.padded_rows}, bad_rows {log.bad_rows}")
    return problems


def random_ops(rng: random.Random, case: str, max_ops: int = 3) -> list[Op]:
    """Ops drawn with ``rng`` from the same families the hypothesis strategy draws from."""
    names = ops_for(case)
    return [(rng.choice(names), rng.random(), rng.randrange(1 << 16), rng.randbytes(rng.randrange(17)))
            for _ in range(rng.randint(1, max_ops))]


def random_layout(rng: random.Random, case: str) -> str:
    """Mostly auto-detection; sometimes the case's own layout or a wrong one, forced."""
    return rng.choice(["auto", "auto", LAYOUT_OF[case], rng.choice(LAYOUTS)])


LIMITS = (None, None, 1, 3)
"""``limit_rows`` values tried: mostly whole files, sometimes a slice that ends before (or at) a corruption."""
