"""Byte and text access to raw CAN capture files: decompression, the first line, CSV streaming.

gzip is recognised by its magic bytes, not the file name. CSV is streamed block by block with
pyarrow (stopping once enough rows are read) and single-threaded, so the line number of every row
dropped for a wrong column count is known; whether such a row is an error is the decoder's call.
Nothing here knows the layouts' columns or values: that is ``pipeline.can.data.readers`` (which
columns) and ``pipeline.can.data.decode`` (what they hold).
"""
from __future__ import annotations

import gzip
import re
import sys
import zlib
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pcsv

from pipeline.can.data.canlog import CanLogError
from pipeline.can.data.fields import combine, shorten

_BLOCK_SIZE = 4 << 20
_SNIFF_BYTES = 1 << 16


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


def read_head(path: Path) -> bytes:
    """The first (decompressed) bytes; a gzip stream that is corrupt or cut short is an error."""
    try:
        raw = _open_binary(path)
        try:
            return raw.read(_SNIFF_BYTES)
        finally:
            raw.close()
    except (OSError, EOFError, zlib.error) as exc:
        raise CanLogError(f"{path}: cannot read (corrupt or truncated gzip?): {one_line(exc)}") from None


def first_line(path: Path, head: bytes | None = None) -> str:
    """The first line, decompressed and without a byte-order mark; an empty file is an error."""
    if head is None:
        head = read_head(path)
    if not head.strip():
        raise CanLogError(f"{path}: empty file")
    line = re.split(rb"\r\n|\r|\n", head.removeprefix(b"\xef\xbb\xbf"), maxsplit=1)[0]
    return line.decode("utf-8", errors="replace")


def read_csv(path: Path, limit_rows: int | None, header: bool, column_types: dict[str, pa.DataType],
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
        raise CanLogError(f"{path}: cannot parse: {one_line(exc)}") from None
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise CanLogError(f"{path}: cannot read (corrupt or truncated gzip?): {one_line(exc)}") from None
    if rows == 0 and not malformed:
        raise CanLogError(f"{path}: empty file (no data rows{' after the header' if header else ''})")
    table = pa.Table.from_batches(batches, schema=schema)
    return table, malformed


def _install_unraisable_filter() -> None:
    """Keep pyarrow from printing a traceback when a malformed row is not valid UTF-8.

    pyarrow decodes the row's text before calling the invalid-row handler; when that fails it prints
    the decode error as an "ignored" exception and then fails the read, which ``read_csv`` reports
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


def read_lines(path: Path, limit_rows: int | None) -> tuple[pa.Array, list[int]]:
    """Every line of a headerless text layout as one string column (a never-used delimiter)."""
    try:
        table, malformed = read_csv(path, limit_rows, header=False, column_types={"line": pa.string()},
                                    column_names=["line"], delimiter="\x1f", quoting=False)
    except pa.ArrowInvalid as exc:
        raise CanLogError(f"{path}: not valid UTF-8 text: {one_line(exc)}") from None
    return combine(table.column("line")), malformed


def one_line(exc: BaseException, limit: int = 200) -> str:
    """A library's error text on one line: it may hold newlines or the bytes of a whole row."""
    return shorten(" ".join(str(exc).split()), limit)
