"""The gpu-check report: rows per check, written as gpu-check.md and its JSON twin gpu-check.json.

Both files are rewritten (atomically) after every check, so a run cut short by its allocation's
time limit still leaves the checks it finished.
"""
from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.run import cell
from pipeline import io

MD_NAME = "gpu-check.md"
JSON_NAME = "gpu-check.json"


@dataclass
class Row:
    """One measured figure: what it is, its value, its target (text) and whether it meets it."""

    key: str
    """Stable id (``check/subject/item``): the smoke test asserts that every expected row is there."""
    metric: str
    value: Any
    target: str | None = None
    ok: bool | None = None
    """None: reported for the record, no target."""


@dataclass
class CheckResult:
    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    """The exception that stopped the check (its rows so far are kept)."""

    @property
    def failed(self) -> bool:
        return self.error is not None or any(r.ok is False for r in self.rows)


@dataclass
class Report:
    meta: dict[str, Any]
    checks: list[CheckResult] = field(default_factory=list)
    error: str | None = None
    """What stopped the run before its checks (building the models and data)."""

    @property
    def ok(self) -> bool:
        return self.error is None and not any(c.failed for c in self.checks)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        io.write_text(out / MD_NAME, self.markdown())
        io.write_json(out / JSON_NAME, {"meta": self.meta, "ok": self.ok, "error": self.error,
                                        "checks": [asdict(c) for c in self.checks]})

    def markdown(self) -> str:
        lines = ["# gpu-check", ""]
        lines += [f"- {k}: {v}" for k, v in self.meta.items()]
        failed = [c.number for c in self.checks if c.failed]
        verdict = "every target met" if not failed else f"**targets missed in check(s) {failed}**"
        lines += [f"- result: {verdict}", ""]
        if self.error:
            lines += [f"**stopped before the checks:** `{self.error}`", ""]
        for check in self.checks:
            lines += [f"## {check.number}. {check.title}", "", f"took {check.seconds:.1f} s", ""]
            if check.error:
                lines += [f"**stopped by an error:** `{check.error}`", ""]
            lines += ["| metric | value | target | ok |", "|---|---|---|---|"]
            lines += [f"| {r.metric} | {cell(r.value)} | {r.target or ''} | {cell(r.ok)} |" for r in check.rows]
            lines.append("")
        return "\n".join(lines)


def error_line(exc: BaseException) -> str:
    """The exception and where it was raised, in one line."""
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first[:300]}{where}"
