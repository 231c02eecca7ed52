"""Student-stage memory: teacher offload + teacher-output cache against a teacher kept on the device
and run every step, side by side on the same run (real hcrl_sa slice, same trained teachers).

* ``student_stage_memory``: the student stage (KD GAT student and VGAE student) runs twice, each in
  a fresh interpreter running ``pipeline.cli student --force``:
  ``distill.offload_teacher_to_cpu/use_teacher_cache`` both on (the teacher cache is deleted first,
  so filling it is part of the measurement) and both off. Reported: the stage's peak memory: peak
  RSS of the stage process on the CPU (its VmHWM), ``torch.cuda.max_memory_allocated`` over the
  stage when the run's device is CUDA (``peak_device_mb`` in done.json).
* The same comparison for one training step in device-independent terms: the live-tensor tracker
  counts the bytes a step allocates (what ``max_memory_allocated`` sees on a GPU), plus the
  teacher's parameters when it stays on the device. On a CPU-only machine this is the number that
  says what the options save on a GPU; peak RSS there is dominated by the interpreter and torch.
  That ratio is the one with a target. The RSS ratio has none: on a CPU-only run the teacher
  already lives in host memory, so there is nothing to offload, and the cache variant does an extra
  chunked teacher pass; its host peak has measured 5-12% above the other's.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline.config import DATA_ROOT_ENV, PROJECT_ROOT, load_profile
from pipeline.runs import RunDir

DATASET = "can-train-and-test/hcrl_sa"
LIMIT_ROWS = 60_000
"""Rows per raw file: ~1,500 train windows, enough for stable peaks, minutes not hours on 2 CPUs."""
EPOCHS = 2
RUN_ROOT = Path(__file__).resolve().parent / "results" / "student_run"
CACHE_ROOT = Path(__file__).resolve().parent / "results" / "cache"
VARIANTS = {
    "offload+cache": ["distill.offload_teacher_to_cpu=true", "distill.use_teacher_cache=true"],
    "teacher every step": ["distill.offload_teacher_to_cpu=false", "distill.use_teacher_cache=false"],
}


def row(metric: str, value: float | str, target: str | None = None, ok: bool | None = None) -> dict[str, Any]:
    return {"benchmark": "student_stage_memory", "metric": metric, "value": value, "target": target, "ok": ok}


def bench_run() -> RunDir:
    """The run with preprocess, autoencoder and teacher done (reused between bench runs)."""
    from pipeline.runner import run_stage

    root = os.environ.get(DATA_ROOT_ENV) or str(PROJECT_ROOT / ".." / "shared" / "data")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = load_profile("hcrl_sa", [
        f"data_root={root}", f"data.dataset={DATASET}", f"data.cache_dir={CACHE_ROOT}",
        f"data.limit_rows={LIMIT_ROWS}", f"train.epochs={EPOCHS}", f"device={device}",
        "distill.train_baseline=false", "stages=[preprocess,autoencoder,teacher,student]",
    ])
    run = RunDir(RUN_ROOT / profile.name / "bench")
    if not run.profile_path.exists() or run.profile().model_dump() != profile.model_dump():
        shutil.rmtree(run.path, ignore_errors=True)
        run = RunDir.create(profile, root=RUN_ROOT, run_id="bench")
    for stage in ("preprocess", "autoencoder", "teacher"):
        run_stage(run.path, stage)
    return run


CHILD = """
import json, sys
from pipeline.cli import main
args = ["student", "--run-dir", sys.argv[1], "--force"]
for item in sys.argv[2:]:
    args += ["-O", item]
rc = main(args)
status = open("/proc/self/status").read().splitlines()
hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "vmhwm_mb": round(hwm_kb / 1024, 1)}))
"""
"""Runs the stage and reports the process's own peak RSS (VmHWM of its address space). getrusage's
ru_maxrss would not do: Linux carries the parent's RSS at fork over into the child's maximum."""


def run_variant(run: RunDir, overrides: list[str]) -> dict[str, Any]:
    """The student stage in a fresh interpreter; returns its done record, status and peak RSS."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(run.path), *overrides], check=True, cwd=PROJECT_ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    child = json.loads(out.strip().splitlines()[-1])
    if child["rc"] != 0:
        raise RuntimeError(f"student stage failed with overrides {overrides}; see {run.path / 'student' / 'log'}")
    return {**(run.done_record("student") or {}), **run.read_status("student"), "peak_rss_mb": child["vmhwm_mb"]}


def clear_teacher_outputs(run: RunDir) -> None:
    cache_dir = Path(run.done_record("preprocess")["cache_dir"])
    shutil.rmtree(cache_dir / "teacher_outputs", ignore_errors=True)


def step_device_bytes(run: RunDir, cached: bool) -> int:
    """Bytes one KD training step holds on the device: step allocations + a resident teacher."""
    from pipeline.can.data.cache import StageData
    from pipeline.can.distill import GAT_TEACHER, LiveTeacher, StandInTeacher
    from pipeline.can.students import build_student, gat_student_loss
    from pipeline.memory import measure_step_peak, tensor_bytes
    from pipeline.train import load_model

    profile = run.profile()
    ctx = _Ctx(profile, run)
    data = StageData.open(ctx)
    device = data.device
    torch.manual_seed(0)
    student = build_student(profile, data.manifest, data.train).to(device)
    if cached:
        source, resident = StandInTeacher({"logits": 2}, GAT_TEACHER.levels), 0
    else:
        live = LiveTeacher(load_model(run.done_record("teacher")["best_checkpoint"], "cpu"), GAT_TEACHER, device,
                           offload=False)
        source, resident = live, tensor_bytes(live.teacher.parameters())
    loss_fn = gat_student_loss(source, None, profile.distill.temperature, profile.distill.alpha)
    batch = data.train.collate(torch.arange(min(profile.train.batch_size, len(data.train)))).to(device)

    def step() -> None:
        loss, _ = loss_fn(student, batch)
        loss.backward()

    return measure_step_peak(step, device) + resident


class _Ctx:
    """The parts of a stage context StageData reads."""

    def __init__(self, profile, run: RunDir):
        self.profile = profile
        self.upstream = {"preprocess": run.done_record("preprocess")}
        self.device = torch.device(profile.device if profile.device != "auto" else "cpu")


def student_stage_memory() -> list[dict[str, Any]]:
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    run = bench_run()
    results = {}
    for name, overrides in VARIANTS.items():
        clear_teacher_outputs(run)
        results[name] = run_variant(run, overrides)
    on, off = results["offload+cache"], results["teacher every step"]
    rows = [
        row("teacher mode (offload+cache / every step)", f"{on.get('teacher_mode')} / {off.get('teacher_mode')}",
            "cache / resident or offload", on.get("teacher_mode") == "cache" and off.get("teacher_mode") != "cache"),
        row("peak RSS MB, offload+cache", on["peak_rss_mb"]),
        row("peak RSS MB, teacher every step", off["peak_rss_mb"]),
        # No target on the host: there the device *is* the host and offloading moves nothing.
        row("peak RSS ratio (offload+cache / every step)", on["peak_rss_mb"] / off["peak_rss_mb"]),
        row("stage seconds, offload+cache", on["elapsed_s"]),
        row("stage seconds, teacher every step", off["elapsed_s"]),
    ]
    if "peak_device_mb" in on and "peak_device_mb" in off:
        rows += [
            row("CUDA max allocated MB, offload+cache", on["peak_device_mb"]),
            row("CUDA max allocated MB, teacher every step", off["peak_device_mb"]),
            row("CUDA peak ratio (offload+cache / every step)", on["peak_device_mb"] / off["peak_device_mb"], "< 1",
                on["peak_device_mb"] < off["peak_device_mb"]),
        ]
    cached, live = step_device_bytes(run, True), step_device_bytes(run, False)
    rows += [
        row("device bytes per KD step (tracker), cache", float(cached)),
        row("device bytes per KD step (tracker), teacher resident", float(live)),
        row("device bytes ratio (cache / resident)", cached / live, "< 1", cached < live),
    ]
    (RUN_ROOT / "student_bench.json").write_text(json.dumps({"variants": results}, indent=2, default=str))
    return rows
