"""Which column of a header CSV or Parquet file holds which field of a CAN log.

Public copies of the same captures name their columns differently (``arbitration_id`` or ``id``,
``attack`` or ``label``, ...), so the common names are recognised without configuration; a
``data.columns`` mapping in the profile names the columns of any other file. Names are matched
case-insensitively and without surrounding whitespace or quotes; other columns are ignored.
"""
from __future__ import annotations

import csv
from typing import Mapping, Sequence

ROLES = ("timestamp", "id", "payload", "label")
"""The fields of a CAN log, in the order readers hand them to the decoder."""
KNOWN_NAMES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "time", "ts"),
    "id": ("arbitration_id", "id", "can_id"),
    "payload": ("data_field", "data", "payload"),
    "label": ("attack", "label", "flag"),
}
"""Column names recognised without configuration, most specific first (it wins when several appear)."""
_WHAT = {"timestamp": "timestamps in seconds", "id": "CAN ids", "payload": "hex payloads",
         "label": "attack labels"}


class ColumnError(ValueError):
    """The file's columns do not name every field; the reader adds the file name."""


def normalise(name: str) -> str:
    """A column name as compared: no surrounding whitespace, quotes or byte-order mark; lower case."""
    return name.strip().lstrip("\ufeff").strip().strip('"').strip().lower()


def split_header(line: str) -> list[str]:
    """The fields of a CSV header line (quotes honoured)."""
    return next(csv.reader([line]), [])


def looks_like_header(fields: Sequence[str], mapping: Mapping[str, str] | None = None) -> bool:
    """Whether a first line names at least one known column (so the file is a header CSV)."""
    known = {n for names in KNOWN_NAMES.values() for n in names}
    known |= {normalise(v) for v in (mapping or {}).values() if v}
    return any(normalise(f) in known for f in fields)


def resolve_columns(names: Sequence[str], mapping: Mapping[str, str] | None = None) -> list[int]:
    """Positions in ``names`` of the timestamp, id, payload and label columns (in ``ROLES`` order).

    ``mapping`` (role -> column name, from ``data.columns``) overrides the recognised names. Raises
    ``ColumnError`` naming the columns found and the ``data.columns`` key to set.
    """
    mapping = {role: name for role, name in (mapping or {}).items() if name}
    unknown = sorted(set(mapping) - set(ROLES))
    if unknown:
        raise ColumnError(f"unknown data.columns key(s) {unknown}; valid: {list(ROLES)}")
    seen = [normalise(n) for n in names]
    positions: dict[str, int] = {}
    problems: list[str] = []
    # Mapped roles first, so a recognised name never claims a column the mapping gave another field.
    for role in sorted(ROLES, key=lambda r: r not in mapping):
        if role in mapping:
            wanted = normalise(mapping[role])
            hits = [i for i, n in enumerate(seen) if n == wanted]
            if not hits:
                problems.append(f"data.columns.{role}={mapping[role]!r} is not a column")
                continue
        else:
            free = [i for i in range(len(seen)) if i not in positions.values()]
            hits = next(([i for i in free if seen[i] == alias] for alias in KNOWN_NAMES[role]
                         if any(seen[i] == alias for i in free)), [])
            if not hits:
                problems.append(f"no {role} column (looked for {'/'.join(KNOWN_NAMES[role])}; "
                                f"set data.columns.{role} to the column holding {_WHAT[role]})")
                continue
        if len(hits) > 1:
            problems.append(f"column {names[hits[0]]!r} appears {len(hits)} times "
                            f"(rename one, or set data.columns.{role})")
            continue
        if hits[0] in positions.values():
            problems.append(f"data.columns names column {names[hits[0]]!r} for two fields")
            continue
        positions[role] = hits[0]
    if problems:
        raise ColumnError(f"{'; '.join(problems)}; columns are {list(names)}")
    return [positions[role] for role in ROLES]
