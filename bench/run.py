"""python -m bench.run [--only NAME ...]: run the registered benchmarks, write a table and JSON.

A benchmark is a function taking no arguments and returning rows
``{"benchmark", "metric", "value", "target", "ok"}`` (``target`` is text such as "<= 3", ``ok`` a
bool or None when there is no target). Register one by adding ``"module:function"`` to
``BENCHMARKS``. Results go to bench/results/table.md and bench/results/results.json; with
``--only`` the other benchmarks keep their previous rows.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pipeline import io

BENCHMARKS: list[str] = [
    "bench.data_bench:preprocess_throughput",
    "bench.data_bench:cache_open",
    "bench.data_bench:collate_speed",
    "bench.reader_fuzz:reader_fuzz",
    "bench.determinism_bench:cache_determinism",
    "bench.memory_bench:gat_memory_accuracy",
    "bench.memory_bench:vgae_memory_accuracy",
    "bench.memory_bench:hgt_memory_accuracy",
    "bench.student_bench:student_stage_memory",
    "bench.kg_bench:kg_sampled_training",
    "bench.kg_bench:kg_export",
    "bench.kg_bench:kg_full_batch",
    "bench.kg_quality:acm_structural_baselines",
    "bench.kg_peers:kg_peers",
]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
COLUMNS = ("benchmark", "metric", "value", "target", "ok")


def resolve(spec: str) -> Callable[[], list[dict[str, Any]]]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def selected(only: list[str] | None) -> list[str]:
    """Specs whose function name or full ``module:function`` is in ``only`` (all if none given)."""
    if not only:
        return list(BENCHMARKS)
    picked = [s for s in BENCHMARKS if s in only or s.partition(":")[2] in only]
    unknown = [o for o in only if not any(o in (s, s.partition(":")[2]) for s in BENCHMARKS)]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; registered: {[s.partition(':')[2] for s in BENCHMARKS]}")
    return picked


def merged(rows: list[dict[str, Any]], ran: set[str]) -> list[dict[str, Any]]:
    """New rows plus the previous results of benchmarks not run this time (``--only``), in registry order."""
    previous = RESULTS_DIR / "results.json"
    old = io.read_json(previous).get("rows", []) if previous.exists() else _table_rows(RESULTS_DIR / "table.md")
    keep = [r for r in old if r.get("benchmark") not in ran]
    order = {s.partition(":")[2]: i for i, s in enumerate(BENCHMARKS)}
    return sorted(keep + rows, key=lambda r: order.get(r.get("benchmark"), len(order)))


def _table_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a committed table.md, as text cells (results.json is not tracked; without it a run
    of some benchmarks must keep the others' rows all the same)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(COLUMNS):
            row: dict[str, Any] = dict(zip(COLUMNS, cells))
            row["ok"] = {"yes": True, "**NO**": False}.get(row["ok"])
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [cell(row.get(c)) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cell(value: Any) -> str:
    """A value as a markdown table cell: yes / **NO** for targets, 4 significant digits, no stray '|'."""
    if value is True:
        return "yes"
    if value is False:
        return "**NO**"
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value).replace("|", "/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    specs = selected(args.only)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        started = time.perf_counter()
        print(f"running {spec} ...", file=sys.stderr, flush=True)
        name = spec.partition(":")[2]
        rows.extend({"benchmark": name, **row} for row in resolve(spec)())
        print(f"  done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    rows = merged(rows, {s.partition(":")[2] for s in specs})
    table = markdown(rows)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    io.write_text(RESULTS_DIR / "table.md", table)
    io.write_json(RESULTS_DIR / "results.json", {"host": platform.node(), "python": platform.python_version(),
                                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows})
    print(table)
    return 0 if all(r.get("ok") is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
