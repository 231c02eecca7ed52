"""``reader_fuzz``: the reader fuzzing of tests/test_reader_fuzz.py at scale.

Draws corrupted inputs with ``random.Random`` from the same generator the hypothesis test uses
(tests/can_corruptions.py: truncation, binary junk, NUL bytes, BOM, CRLF and mixed newlines, wrong
field values and column types, huge and negative numbers, empty lines, gzip cut short, Parquet
columns of the wrong type), reads each with ``bad_rows`` error and skip, and counts the outcomes
per case. The rule: every read is a valid log or one ``CanLogError`` naming the file.
"""
from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.can_corruptions import CASES, LIMITS, SUFFIX, RuleBroken, build, judge, random_layout, random_ops

INPUTS_PER_CASE = 2000
SEED = 14


def row(metric: str, value: float, target: str | None = None, ok: bool | None = None) -> dict[str, Any]:
    return {"benchmark": "reader_fuzz", "metric": metric, "value": value, "target": target, "ok": ok}


def reader_fuzz(inputs_per_case: int = INPUTS_PER_CASE, seed: int = SEED) -> list[dict[str, Any]]:
    """Outcome counts per case; one row of broken-rule reads (target 0), naming the first one."""
    rng = random.Random(seed)
    outcomes: Counter[tuple[str, str]] = Counter()
    broken: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-reader-fuzz-") as tmp:
        for case in CASES:
            path = Path(tmp) / f"input{SUFFIX[case]}"
            for _ in range(inputs_per_case):
                ops, layout, limit = random_ops(rng, case), random_layout(rng, case), rng.choice(LIMITS)
                path.write_bytes(build(case, ops))
                for mode in ("error", "skip"):
                    try:
                        outcomes[case, judge(path, layout, mode, limit)] += 1
                    except RuleBroken as exc:
                        outcomes[case, "broken"] += 1
                        broken.append(f"{case} {ops} layout={layout} bad_rows={mode}: {str(exc).splitlines()[0]}")
    elapsed = time.perf_counter() - started
    reads = 2 * inputs_per_case
    rows = []
    for case in CASES:
        rows += [row(f"{case}: inputs tried (each read with bad_rows error and skip: {reads} reads)",
                     float(inputs_per_case)),
                 row(f"{case}: reads giving a valid log", float(outcomes[case, "valid"])),
                 row(f"{case}: reads giving one error naming the file", float(outcomes[case, "error"]))]
    total = sum(outcomes[case, "broken"] for case in CASES)
    first = f" (first: {broken[0][:160]})" if broken else ""
    rows += [row(f"inputs tried, all cases (seed {seed})", float(inputs_per_case * len(CASES))),
             row("seconds", elapsed),
             row(f"reads breaking the rule: another exception, an unnamed or multi-line error, "
                 f"an inconsistent log{first}", float(total), "== 0", total == 0)]
    return rows
