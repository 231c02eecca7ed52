"""Runs the five checks in order, timing each, and rewrites the report after every one of them.

A check that raises is recorded with its error and the next one runs: on a short GPU allocation
one broken check must not cost the others' results.
"""
from __future__ import annotations

import gc
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from bench.gpu_check import device as dev
from bench.gpu_check.estimate import check_estimates
from bench.gpu_check.offload import check_offload
from bench.gpu_check.oom import check_oom_backoff
from bench.gpu_check.report import CheckResult, Report, Row, error_line
from bench.gpu_check.sizes import Sizes
from bench.gpu_check.small_devices import check_small_devices
from bench.gpu_check.throughput import check_throughput
from bench.gpu_check.workloads import SAFETY_FACTOR, CanData, Subject, can_subjects, hgt_subject

TITLES = {
    1: "Estimate against the allocator",
    2: "No out-of-memory at safety_factor 0.9 on small devices",
    3: "A real out-of-memory error backs off",
    4: "Offload: the KD student step with the teacher resident, offloaded and cached",
    5: "Throughput (for the record)",
}


def run_checks(out: Path, device: torch.device, sizes: Sizes, only: set[int] | None = None) -> int:
    """Run the checks (all, or ``only``), write the report to ``out``; 0 if every target is met, else 1."""
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    if sizes.threads:
        torch.set_num_threads(sizes.threads)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    report = Report({**dev.describe(device), "preset": sizes.name, "safety_factor": SAFETY_FACTOR,
                     "started": started})
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        started_setup = time.perf_counter()
        try:
            data = setup(sizes, device, work)
        except Exception as exc:   # noqa: BLE001 - reported; without models no check can run
            report.error = f"setting up the models and data: {error_line(exc)}"
            report.write(out)
            logging.getLogger("gpu-check").exception("setup failed")
            print(f"gpu-check: {report.error}; report in {out / 'gpu-check.md'}", file=sys.stderr)
            return 1
        report.meta["setup_seconds"] = round(time.perf_counter() - started_setup, 1)
        # Everything alive now (modules, models, data) stays: the collections every measurement
        # starts with then scan only what the checks create.
        gc.collect()
        gc.freeze()
        for number, check in checks(data, sizes, device, work).items():
            if only and number not in only:
                continue
            print(f"gpu-check: check {number} ({TITLES[number]}) ...", file=sys.stderr, flush=True)
            result = run_one(number, check, device)
            report.checks.append(result)
            report.write(out)
            print(f"gpu-check: check {number} {'FAILED' if result.failed else 'ok'} in {result.seconds:.1f} s",
                  file=sys.stderr, flush=True)
    report.meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report.write(out)
    print(f"gpu-check: report in {out / 'gpu-check.md'}; {'every target met' if report.ok else 'TARGETS MISSED'}",
          file=sys.stderr)
    return 0 if report.ok else 1


def setup(sizes: Sizes, device: torch.device, work: Path) -> tuple[CanData, Subject]:
    """The models under test and their data, built once for all checks."""
    dev.warm_up(device)
    return can_subjects(sizes, device, work), hgt_subject(sizes, device, work)


def checks(data: tuple[CanData, Subject], sizes: Sizes, device: torch.device, work: Path
           ) -> dict[int, Callable[[], list[Row]]]:
    can, hgt = data
    models = [*can.subjects, hgt]
    return {
        1: lambda: check_estimates(models, sizes, device, work),
        2: lambda: check_small_devices(models, sizes, device, work),
        3: lambda: check_oom_backoff(sizes, device, work),
        4: lambda: check_offload(can.split, can.manifest, can.profile, sizes, device, work),
        5: lambda: check_throughput(can.subjects[0], hgt, sizes, device, work),
    }


def run_one(number: int, check: Callable[[], list[Row]], device: torch.device) -> CheckResult:
    result = CheckResult(number, TITLES[number])
    started = time.perf_counter()
    try:
        result.rows = check()
    except Exception as exc:   # noqa: BLE001 - recorded in the report; the next check still runs
        result.error = error_line(exc)
        logging.getLogger("gpu-check").exception("check %d stopped", number)
    result.seconds = round(time.perf_counter() - started, 1)
    dev.free_cached(device)
    return result
