"""Vectorised hex decoding and character-buffer helpers over pyarrow string arrays.

Hex fields are decoded by padding them to a fixed width, viewing the string buffer as a ``uint8``
matrix and mapping ASCII digit pairs to byte values through a 64K-entry lookup table, so a column
of tens of millions of ids or payloads is decoded in a few numpy gathers, never a per-row loop.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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

def hex_bytes(text: pa.Array, lengths: np.ndarray, width: int, pad_left: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, width/2] byte values of ``text`` padded with '0' to ``width`` digits, and a row ok mask.

    The padded string buffer is viewed as uint16 digit pairs and decoded through a 64K-entry table in
    one gather. Rows too long or not ASCII are blanked first so every padded row has exactly ``width``
    bytes; the caller reports them.
    """
    n = len(text)
    unfit = lengths > width
    if unfit.any() or not all_ascii(text):
        unfit |= ~np.asarray(pc.string_is_ascii(text).to_numpy(zero_copy_only=False), dtype=bool)
        text = pc.if_else(pa.array(unfit), "", text)
    padded = (pc.ascii_lpad if pad_left else pc.ascii_rpad)(text, width, "0")
    pairs = fixed_width_view(padded, width).view(np.uint16)
    decoded = _PAIR[pairs]
    if n and int(decoded.max()) > 255:
        ok = ~unfit & (decoded <= 255).all(axis=1)
        decoded[decoded > 255] = 0
    else:
        ok = ~unfit
    return decoded.astype(np.uint8), ok


def non_ascii(text: pa.Array) -> np.ndarray:
    """Rows of ``text`` holding a non-ASCII character."""
    if all_ascii(text):
        return np.zeros(len(text), dtype=bool)
    return ~np.asarray(pc.string_is_ascii(text).to_numpy(zero_copy_only=False), dtype=bool)


def all_ascii(text: pa.Array) -> bool:
    """Cheap test over the whole character buffer at once: ASCII bytes are all below 0x80."""
    chars = char_buffer(text)
    return chars.size == 0 or int(chars.max()) < 0x80


def trim(text: pa.Array) -> pa.Array:
    """``text`` without surrounding ASCII whitespace (spaces, tabs, CR); untouched (no copy) if it has none."""
    chars = char_buffer(text)
    # ASCII whitespace is all at or below 0x20: a min reduction rules it out without a gather.
    if chars.size == 0 or int(chars.min()) > 0x20:
        return text
    return pc.ascii_trim_whitespace(text)


def char_buffer(arr: pa.Array) -> np.ndarray:
    """The characters of every string of ``arr``, back to back, as uint8 (no copy)."""
    n = len(arr)
    if n == 0 or arr.buffers()[2] is None:
        return np.zeros(0, np.uint8)
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=offset_type)[arr.offset: arr.offset + n + 1]
    return np.frombuffer(arr.buffers()[2], dtype=np.uint8)[int(offsets[0]):int(offsets[-1])]


def fixed_width_view(arr: pa.Array, width: int) -> np.ndarray:
    """The character buffer of an array whose strings all have ``width`` bytes, as uint8 [N, width]."""
    chars = char_buffer(arr)
    if chars.size != len(arr) * width:
        raise AssertionError("padded strings are not of uniform width")
    return chars.reshape(len(arr), width)
