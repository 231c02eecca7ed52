"""Check 4: the KD student's step with its teacher resident, offloaded and cached: the device peak of each.

The GAT student of the profile learns from a GAT teacher in the three ways the student stage offers
(``pipeline.can.students``, ``pipeline.can.distill``): the teacher kept on the device and run every
step, kept on the host and moved in for its forward only (``offload_teacher_to_cpu``), or not run
at all, its logits read from the output cache (``use_teacher_cache``; filled here by the chunked
inference the stage uses). Each is planned as the stage plans it and takes the same batch; the
peak of its step is compared with that plan (check 1's target), and the peaks with each other: the
cache must hold less than a resident teacher, offloading no more.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from bench.gpu_check.device import free_cached
from bench.gpu_check.estimate import OVER, TARGET, UNDER, measure_step
from bench.gpu_check.report import Row
from bench.gpu_check.sizes import GiB, Sizes
from bench.gpu_check.workloads import SAFETY_FACTOR, trainer
from pipeline.can.data.cache import GraphSplit
from pipeline.can.data.loader import GraphLoader
from pipeline.config import Profile
from pipeline.memory import format_bytes

MODES = ("resident", "offloaded", "cached")


def check_offload(split: GraphSplit, manifest: dict[str, Any], profile: Profile, sizes: Sizes,
                  device: torch.device, work: Path) -> list[Row]:
    from pipeline.can.classifier import build_model
    from pipeline.can.distill import GAT_TEACHER, compute_teacher_outputs

    torch.manual_seed(0)
    teacher = build_model(profile, manifest, split)
    outputs = compute_teacher_outputs(copy.deepcopy(teacher), GAT_TEACHER, split, device, SAFETY_FACTOR, None)
    free_cached(device)
    index, peaks, rows = None, {}, []
    for mode in MODES:
        index, peak, mode_rows = mode_rows_for(mode, teacher, outputs, split, manifest, profile, sizes, device,
                                               work / f"offload-{mode}", index)
        peaks[mode] = peak
        rows += mode_rows
        free_cached(device)
    cached, offloaded = peaks["cached"] / peaks["resident"], peaks["offloaded"] / peaks["resident"]
    return rows + [
        Row("4/cached-vs-resident", "device peak: cached / resident", round(cached, 4), "< 1", cached < 1),
        Row("4/offloaded-vs-resident", "device peak: offloaded / resident", round(offloaded, 4), "<= 1",
            offloaded <= 1),
    ]


def mode_rows_for(mode: str, teacher: torch.nn.Module, outputs: dict[str, torch.Tensor], split: GraphSplit,
                  manifest: dict[str, Any], profile: Profile, sizes: Sizes, device: torch.device, folder: Path,
                  index: torch.Tensor | None) -> tuple[torch.Tensor, int, list[Row]]:
    """Plan and measure one mode; the first mode's plan picks the batch (``index``) all modes take."""
    from pipeline.can.distill import GAT_TEACHER, TeacherOutputLoader
    from pipeline.can.plan import plan_graph_batches
    from pipeline.can.students import build_student, gat_student_loss

    source, planning, resident = teacher_sources(mode, teacher, device)
    torch.manual_seed(0)
    student = build_student(profile, manifest, split).to(device)
    d = profile.distill
    budget, plan = plan_graph_batches(student, split, gat_student_loss(planning, None, d.temperature, d.alpha),
                                      device, SAFETY_FACTOR, 10**6, folder / "plan.json", "gpu-check",
                                      teacher=resident, target_gb=sizes.offload_bytes / GiB, amp=True,
                                      count_process=False, log=lambda m: None)
    if index is None:
        index = GraphLoader(split, 10**6, shuffle=True, seed=0, max_nodes=plan.max_nodes).batches()[0]
    batch = (TeacherOutputLoader(GraphLoader(split, 1), outputs, GAT_TEACHER.levels).collate(index)
             if mode == "cached" else split.collate(index))
    t = trainer(student, gat_student_loss(source, None, d.temperature, d.alpha), profile, folder, device,
                sizes.threads)
    meter = measure_step(t, batch, device, (resident,) if resident is not None else ())
    predicted = budget.static_total + budget.activation.predict(batch.num_nodes, batch.num_edges)
    err = predicted / meter.allocated - 1
    key, label = f"4/{mode}", f"teacher {mode} (mode {source.mode!r})"
    return index, meter.allocated, [
        Row(f"{key}/peak", f"{label}: device peak of a student step ({batch.num_nodes:,} nodes)",
            format_bytes(meter.allocated)),
        Row(f"{key}/error", f"{label}: the student plan's estimate {format_bytes(predicted)} against it; error",
            round(err, 4), TARGET, UNDER <= err <= OVER),
    ]


def teacher_sources(mode: str, teacher: torch.nn.Module, device: torch.device) -> tuple[Any, Any, Any]:
    """(what the loss reads teacher outputs from, what the planner's probes read, the teacher module
    left on the device between steps), as ``pipeline.can.students.teacher_setup`` builds them."""
    from pipeline.can.distill import GAT_TEACHER, CachedTeacher, LiveTeacher, StandInTeacher

    if mode == "cached":
        return CachedTeacher(), StandInTeacher({"logits": 2}, GAT_TEACHER.levels), None
    live = LiveTeacher(copy.deepcopy(teacher), GAT_TEACHER, device, offload=mode == "offloaded")
    return live, live, live.resident()
