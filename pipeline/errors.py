"""Expected errors and how the command lines report them.

An expected error is one the user fixes: bad input data, a bad profile, a missing file, a stage
that stopped on one of those. Its message already names the file (and line or key) and the fix,
so ``python -m pipeline.cli`` and ``python -m jobs`` print it as one line,
``error: <message>``, and exit with ``EXIT_USER_ERROR``; the traceback stays in the stage log and
is printed too with ``--debug`` or ``PIPELINE_DEBUG=1``. Any other exception is a bug, and keeps
its traceback.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import TextIO

EXIT_USER_ERROR = 2
DEBUG_ENV = "PIPELINE_DEBUG"


class UserError(Exception):
    """Base of the errors the user fixes; the message names the file (and line or key) and the fix."""


class InputError(UserError, ValueError):
    """An input file or setting whose content cannot be used (a ValueError, as it always was)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or a stage must have written) is not there."""


def is_expected(exc: BaseException) -> bool:
    """Whether ``exc`` is an error the user fixes (reported in one line) rather than a bug."""
    return isinstance(exc, UserError)


def one_line(exc: BaseException) -> str:
    """The message and its notes (``add_note``, e.g. the stage log) as one line."""
    parts = [str(exc) or type(exc).__name__, *getattr(exc, "__notes__", ())]
    text = ""
    for line in (line.strip() for part in parts for line in str(part).splitlines()):
        if line:
            # a heading ("invalid profile:") runs on into its first item; other lines are items
            text += line if not text else (f" {line}" if text.endswith(":") else f"; {line}")
    return text


def debug_enabled(flag: bool = False) -> bool:
    """--debug, or PIPELINE_DEBUG set to anything but empty, 0, false or no."""
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def report(exc: BaseException, debug: bool = False, stream: TextIO | None = None) -> int:
    """Print an expected error as ``error: ...`` (after its traceback when ``debug``); returns the exit code."""
    stream = stream or sys.stderr
    message = one_line(exc)
    if debug:
        stream.write("".join(traceback.format_exception(exc)))
    # Drop the failed frames first: what they still hold (an open progress bar) finishes writing
    # now, so the error stays the last line.
    exc.__traceback__ = None
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            linked.__traceback__ = None
    print(f"error: {message}", file=stream, flush=True)
    return EXIT_USER_ERROR
