"""Check 2: no out-of-memory at safety_factor 0.9 on small devices.

Each model is planned for devices of ``Sizes.small_devices`` (2, 4 and 8 GiB on a GPU), then the
training loop takes ``Sizes.steps`` optimizer steps of full batches of the plan's budget while the
process may use only what such a device would give it: ``set_per_process_memory_fraction`` at the
device total less what this device already holds outside the allocator (CUDA context and library
handles, measured). Target: zero out-of-memory errors, and the allocated peak within the share of
the device the plan may fill (total x safety_factor - fixed lines).
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import torch

from bench.gpu_check.device import Meter, device_limit, free_cached, outside_allocator, resident_bytes
from bench.gpu_check.report import Row
from bench.gpu_check.sizes import Sizes
from bench.gpu_check.workloads import SAFETY_FACTOR, Subject, train_step, trainer
from pipeline.memory import CUDA_CONTEXT_BYTES, format_bytes, is_out_of_memory


def check_small_devices(subjects: list[Subject], sizes: Sizes, device: torch.device, work: Path) -> list[Row]:
    outside = context_row(device)
    rows = [outside[0]]
    for subject in subjects:
        with subject.on(device):
            for total in sizes.small_devices:
                folder = work / f"small-{subject.name.replace(' ', '-')}-{total}"
                rows += device_rows(subject, total, sizes, device, folder, outside[1])
                free_cached(device)
    return rows


def context_row(device: torch.device) -> tuple[Row, int]:
    """What the device holds outside the caching allocator, against the budget's CUDA context line."""
    outside = outside_allocator(device)
    if outside is None:
        return Row("2/context", "CUDA context and libraries outside the allocator", "n/a on the CPU"), 0
    return (Row("2/context", "CUDA context and libraries outside the allocator (measured after the first steps)",
                format_bytes(outside), f"<= {format_bytes(CUDA_CONTEXT_BYTES)} (the budget's CUDA context line)",
                outside <= CUDA_CONTEXT_BYTES), outside)


def device_rows(subject: Subject, total: int, sizes: Sizes, device: torch.device, folder: Path,
                outside: int) -> list[Row]:
    key = f"2/{subject.name}/{total >> 20}MiB"
    label = f"{subject.name}, {format_bytes(total)} device"
    try:
        planned = subject.plan(total, folder / "plan.json")
    except MemoryError as exc:
        return [Row(f"{key}/plan", f"{label}: plan", f"refused: {exc}", "a plan", False)]
    budget = planned.budget
    limit = int(total * budget.safety_factor) - budget.fixed_total
    t = trainer(subject.model, subject.loss_fn, subject.profile, folder, device, sizes.threads)
    t.optimizer.zero_grad(set_to_none=True)
    base = resident_bytes([t.model], t.optimizer)
    ooms, steps = 0, 0
    meter = Meter(device, lambda: base)
    # drawn beforehand: on the host, and outside what is measured
    batches = list(islice(subject.batches(planned.units, 1), sizes.steps))
    with device_limit(device, total - outside, base), meter:
        for batch in batches:
            steps += 1
            try:
                train_step(t, batch)
            except Exception as exc:   # noqa: BLE001 - an out-of-memory is the figure this check counts
                if not is_out_of_memory(exc):
                    raise
                ooms += 1
                t.optimizer.zero_grad(set_to_none=True)
                free_cached(device)
    share = meter.allocated / limit
    rows = [Row(f"{key}/plan", f"{label}: plan at safety_factor {SAFETY_FACTOR}", planned.text),
            Row(f"{key}/ooms", f"{label}: out-of-memory errors in {steps} steps of full batches", ooms, "0",
                ooms == 0),
            Row(f"{key}/share", f"{label}: allocated peak {format_bytes(meter.allocated)} as a share of what the "
                f"plan may fill ({format_bytes(limit)})", round(share, 4), "<= 1", share <= 1)]
    if meter.reserved is not None:
        rows.append(Row(f"{key}/reserved", f"{label}: reserved peak as a share of the emulated device's allocator "
                        f"limit ({format_bytes(total - outside)})", round(meter.reserved / (total - outside), 4)))
    return rows
