"""Check 3: a real out-of-memory error backs off, and the epoch finishes.

The teacher stage runs as a job runs it (``pipeline.runner.run_stage`` in a run directory, after the
preprocess stage on the bundled sample), told by ``PIPELINE_MEMORY_GB`` that the device is far larger
than what it may use: the caching allocator's own limit (``set_per_process_memory_fraction``) sits at
three quarters of what one step on the whole train split needs. The plan, sized for the claimed
total, puts the whole split in one batch; that step runs out of memory in the allocator, the loop
halves the node budget and reruns the epoch, and the epoch finishes with an ``oom_backoff`` line in
metrics.jsonl. On the CPU a live-tensor tracker with the same limit raises the error instead.
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import torch

from bench.gpu_check.device import device_limit, free_cached
from bench.gpu_check.report import Row, error_line
from bench.gpu_check.sizes import MiB, Sizes
from bench.gpu_check.workloads import can_profile
from pipeline import io
from pipeline.memory import MEMORY_GB_ENV, backward_step, format_bytes, measure_step_peak, static_costs
from pipeline.runner import run_stage
from pipeline.runs import RunDir

LIMIT_SHARE = 0.75
"""The emulated device gives the allocator this share of the whole-split step (plus the static
memory and a margin): the whole split does not fit, half of it does."""
MARGIN = {"cuda": 64 * MiB, "cpu": 1 * MiB}
"""Room for what a step holds beyond its tensors' fit: cuBLAS workspaces, allocator rounding."""
BACKOFF_LINE = re.compile(r"out of memory in epoch \d+ \((.*)\); retrying")


def check_oom_backoff(sizes: Sizes, device: torch.device, work: Path) -> list[Row]:
    extra = (f"data.cache_dir={work / 'oom-cache'}", f"device={device.type}", "train.epochs=1",
             "train.batch_size=1000000", "stages=[preprocess,teacher]",
             *((f"train.threads={sizes.threads}",) if sizes.threads else ()))
    run = RunDir.create(can_profile(sizes, extra), root=work / "runs", run_id="oom-backoff")
    run_stage(run.path, "preprocess")
    whole, limit = emulated_device(run, device)
    free_cached(device)
    error = None
    with claimed_total(sizes.oom_claim_gb), device_limit(device, limit):
        try:
            run_stage(run.path, "teacher")
        except Exception as exc:   # noqa: BLE001 - a stage that fails is this check's failing row
            error = error_line(exc)
    rows = [Row("3/claim", f"device total the stage is told ({MEMORY_GB_ENV})", f"{sizes.oom_claim_gb:g} GB"),
            Row("3/limit", f"what it may use: {LIMIT_SHARE:.0%} of one step on the whole train split "
                f"({format_bytes(whole)}) + static + margin", format_bytes(limit))]
    if error is not None:
        return rows + [Row("3/stage", "teacher stage", error, "finishes its epoch", False)]
    return rows + outcome_rows(run, device)


def emulated_device(run: RunDir, device: torch.device) -> tuple[int, int]:
    """(peak of one step on the whole train split, the limit the emulated device sets) for the teacher
    the stage will build, measured the way the planner measures (AMP as the profile has it)."""
    from pipeline.can.classifier import build_model, class_weights, cross_entropy_loss
    from pipeline.can.data.cache import GraphSplit
    from pipeline.train import seed_everything

    profile = run.profile()
    cache = Path(run.done_record("preprocess")["cache_dir"])
    manifest = io.read_json(cache / io.MANIFEST)
    split = GraphSplit.open(cache / manifest["splits"]["train"]["file"])
    seed_everything(profile.train.seed)
    model = build_model(profile, manifest, split).to(device)
    weights = class_weights(split.y).to(device) if profile.train.class_weighting else None
    step = backward_step(model, cross_entropy_loss(weights), device, profile.train.amp)
    batch = split.collate(torch.arange(len(split))).to(device)
    whole = measure_step_peak(partial(step, batch), device)
    static = sum(v for k, v in static_costs(model).items() if not k.startswith("of which"))
    # static x4: parameters, gradients and optimizer state, and the loop's snapshot of them for a rerun
    return whole, int(LIMIT_SHARE * whole) + 4 * static + MARGIN.get(device.type, MARGIN["cpu"])


@contextmanager
def claimed_total(gb: float) -> Iterator[None]:
    old = os.environ.get(MEMORY_GB_ENV)
    os.environ[MEMORY_GB_ENV] = str(gb)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(MEMORY_GB_ENV, None)
        else:
            os.environ[MEMORY_GB_ENV] = old


def outcome_rows(run: RunDir, device: torch.device) -> list[Row]:
    stage_dir = run.stage_dir("teacher")
    events = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    backoffs = [e for e in events if e.get("event") == "oom_backoff"]
    epochs = [e for e in events if "train_loss" in e]
    plan = io.read_json(stage_dir / "memory_plan.json")["plan"]
    first = first_oom_message(stage_dir / "log")
    real = device.type == "cuda"
    return [
        Row("3/plan", "plan for the claimed total: nodes per batch", plan["max_nodes"]),
        Row("3/backoffs", "oom_backoff lines in metrics.jsonl", len(backoffs), ">= 1", len(backoffs) >= 1),
        Row("3/error", "the first out-of-memory error, as the stage log has it", first,
            "CUDA out of memory (the caching allocator)" if real else None,
            ("CUDA out of memory" in first) if real else None),
        Row("3/budget", "nodes per batch after the back-off",
            backoffs[-1]["max_nodes"] if backoffs else None),
        Row("3/epoch", "epoch 1 finished after the back-off (its train loss)",
            round(epochs[-1]["train_loss"], 4) if epochs else None, "epoch 1 in metrics.jsonl, stage done",
            bool(epochs) and run.done_record("teacher") is not None),
    ]


def first_oom_message(log: Path) -> str:
    """The error of the stage log's first back-off warning (the loop logs it in parentheses)."""
    found = BACKOFF_LINE.search(log.read_text())
    return found.group(1)[:200] if found else "(none logged)"
