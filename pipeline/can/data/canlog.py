"""What a raw CAN log reads into (``CanLog``) and the one error a reader raises (``CanLogError``).

Kept apart from the readers so the file access (``pipeline.can.data.rawio``), the decoders
(``pipeline.can.data.decode``) and the entry points (``pipeline.can.data.readers``) share them
without importing each other in a circle.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.can.data.fields import MAX_PAYLOAD_BYTES
from pipeline.errors import InputError


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
