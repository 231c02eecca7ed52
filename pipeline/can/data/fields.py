"""Decoding one column of a CAN log into numpy, with a bad-row check per value.

Each parser takes a pyarrow column (text, or a typed Parquet column), returns a numpy array and
records the rows it cannot read in a ``Checks`` (mask plus the reason of the first one, worded only
when it is reported). Surrounding whitespace is ignored; everything is vectorised.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.can.data.hexcodec import char_buffer, hex_bytes, non_ascii, trim

MAX_ID_CHARS = 8
"""29-bit extended ids need 8 hex digits; anything longer is not a CAN id."""
MAX_PAYLOAD_BYTES = 8
LABEL_WORDS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1, "r": 0, "t": 1,
               "normal": 0, "attack": 1, "benign": 0}
"""Label text (compared case-insensitively) -> label."""
LABEL_HELP = "0/1, true/false, R/T, normal/attack"
_FLOAT_OK = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_SECONDS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


class Checks:
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


def is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def parse_float(column: pa.ChunkedArray | pa.Array, checks: Checks, name: str) -> np.ndarray:
    arr = combine(column)
    if pa.types.is_timestamp(arr.type):
        scale = _SECONDS[arr.type.unit]
        arr = pc.divide(pc.cast(pc.cast(arr, pa.int64()), pa.float64()), scale)
    elif is_text(arr.type):
        text = trim(arr.fill_null(""))
        ok = np.asarray(pc.match_substring_regex(text, _FLOAT_OK).to_numpy(zero_copy_only=False), dtype=bool)
        checks.add(~ok, lambda i: f"{name} {value_at(text, i)} is not a number")
        arr = pc.cast(pc.if_else(pa.array(ok), text, "0"), pa.float64())
    values = _as_float64(arr)
    checks.add(~np.isfinite(values), lambda i: f"{name} is empty" if not arr[i].is_valid
               else f"{name} {value_at(arr, i)} is not a finite number")
    return values


def _as_float64(arr: pa.Array) -> np.ndarray:
    """float64 values, NaN for nulls. Integers past 2**53 round (``safe=False``) instead of failing: they are
    bad values to report, or far-off times, never a crash."""
    return np.asarray(pc.cast(arr, pa.float64(), safe=False).fill_null(np.nan).to_numpy(zero_copy_only=False),
                      np.float64)


def parse_id(column: pa.ChunkedArray | pa.Array, checks: Checks, name: str) -> np.ndarray:
    """uint32 CAN ids from integers of any width and sign, or from hex text (8 digits at most)."""
    arr = combine(column)
    if not pa.types.is_integer(arr.type):
        return _parse_hex_id(trim(arr.fill_null("")), checks, name)
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    checks.add(null, lambda i: f"empty {name}")
    values = arr.fill_null(0).to_numpy(zero_copy_only=False)
    if pa.types.is_signed_integer(arr.type):
        wide = values.astype(np.int64)
        out_of_range = (wide < 0) | (wide >= 1 << 32)
    else:
        wide = values.astype(np.uint64)
        out_of_range = wide >= np.uint64(1 << 32)
    checks.add(out_of_range, lambda i: f"{name} {int(values[i])} is not a CAN id (0 to 2**32-1)")
    return np.where(out_of_range, 0, wide).astype(np.uint32)


def _parse_hex_id(text: pa.Array, checks: Checks, name: str) -> np.ndarray:
    lengths = text_lengths(text)
    empty = lengths == 0
    too_long = lengths > MAX_ID_CHARS
    checks.add(non_ascii(text), lambda i: f"{name} {value_at(text, i)} is not hexadecimal")
    checks.add(empty, lambda i: f"empty {name}")
    checks.add(too_long, lambda i: f"{name} {value_at(text, i)} longer than {MAX_ID_CHARS} hex digits")
    width = int(min(max(lengths.max(initial=1), 1), MAX_ID_CHARS))
    width += width % 2
    octets, ok = hex_bytes(text, lengths, width, pad_left=True)
    checks.add(~ok & ~too_long & ~empty, lambda i: f"{name} {value_at(text, i)} is not hexadecimal")
    value = np.zeros(len(text), dtype=np.uint32)
    for j in range(octets.shape[1]):
        value <<= np.uint32(8)
        value |= octets[:, j]
    return value


def parse_hex_payload(column: pa.ChunkedArray | pa.Array, checks: Checks, name: str
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Payload bytes [N, 8] (zero-padded) and their count, from hex strings of 0-16 digits."""
    text = trim(combine(column).fill_null(""))
    lengths = text_lengths(text)
    too_long = lengths > 2 * MAX_PAYLOAD_BYTES
    odd = (lengths % 2 == 1) & ~too_long
    checks.add(non_ascii(text), lambda i: f"{name} {value_at(text, i)} is not hexadecimal")
    checks.add(too_long, lambda i: f"{name} {value_at(text, i)} has more than {MAX_PAYLOAD_BYTES} bytes")
    checks.add(odd, lambda i: f"{name} {value_at(text, i)} has an odd number of hex digits")
    width = int(min(lengths.max(initial=0), 2 * MAX_PAYLOAD_BYTES))
    width += width % 2
    if width == 2 * MAX_PAYLOAD_BYTES:
        payload, ok = hex_bytes(text, lengths, width, pad_left=False)
    else:
        payload = np.zeros((len(text), MAX_PAYLOAD_BYTES), dtype=np.uint8)
        ok = np.ones(len(text), dtype=bool)
        if width:
            payload[:, : width // 2], ok = hex_bytes(text, lengths, width, pad_left=False)
    checks.add(~ok & ~too_long, lambda i: f"{name} {value_at(text, i)} is not hexadecimal")
    dlc = np.minimum(lengths // 2, MAX_PAYLOAD_BYTES).astype(np.uint8)
    return payload, dlc


def parse_label(column: pa.ChunkedArray | pa.Array, checks: Checks, name: str) -> np.ndarray:
    """uint8 labels from 0/1 numbers, booleans or words (``LABEL_WORDS``); anything else is a bad row."""
    arr = combine(column)
    if is_text(arr.type):
        return parse_words(arr, LABEL_WORDS, checks, name, f"one of {LABEL_HELP}")
    values = _as_float64(arr)
    checks.add((values != 0) & (values != 1), lambda i: f"{name} must be one of {LABEL_HELP}, "
                                                        f"found {value_at(arr, i)}")
    return (values == 1).astype(np.uint8)


def parse_words(column: pa.ChunkedArray | pa.Array, mapping: dict[str, int], checks: Checks, name: str,
                allowed: str) -> np.ndarray:
    """Map short text (a label word, 'R'/'T', a DLC digit) to uint8 codes, ignoring case and surrounding
    whitespace; ``mapping`` keys are lower case. Other values are bad rows."""
    text = trim(combine(column).fill_null(""))
    chars = char_buffer(text)
    if chars.size == len(text) and int(pc.min(pc.binary_length(text)).as_py() or 0) == 1:
        # Every value is one character: map the character buffer through a table.
        table = np.full(256, 255, dtype=np.uint8)
        for key, value in mapping.items():
            if len(key) == 1:
                table[ord(key.lower())] = table[ord(key.upper())] = value
        out = table[chars]
    else:
        keys = list(mapping)
        index = pc.index_in(pc.ascii_lower(text), value_set=pa.array(keys, pa.string()))
        codes = np.append(np.asarray([mapping[k] for k in keys], dtype=np.uint8), np.uint8(255))
        out = codes[np.asarray(index.fill_null(len(keys)).to_numpy(zero_copy_only=False), dtype=np.int64)]
    checks.add(out == 255, lambda i: f"{name} must be {allowed}, found {value_at(text, i)}")
    out[out == 255] = 0
    return out


def text_lengths(text: pa.Array) -> np.ndarray:
    return np.asarray(pc.binary_length(text).to_numpy(zero_copy_only=False), dtype=np.int64)


def combine(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def value_at(arr: pa.Array, i: int) -> str:
    """Value ``i`` of ``arr`` for a message, quoted and shortened; text that is not UTF-8 (Parquet does
    not check) shows replacement characters instead of failing."""
    value = arr[i]
    if not value.is_valid:
        return "None"
    if is_text(arr.type):
        return repr(shorten(value.as_buffer().to_pybytes().decode("utf-8", errors="replace")))
    return repr(value.as_py())


def shorten(text: str | None, limit: int = 80) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
