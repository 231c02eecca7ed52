"""One planner skeleton for every workload: reuse the cached plan, or probe, budget, size and save.

A workload's planner (``pipeline.can.plan``: graphs per batch; ``pipeline.kg.plan``: seed edges per
step) subclasses :class:`Workload` with only what differs: its probe batches, its fit of the
probes, the host data its process maps, its sizing rule and its plan type. :func:`plan_memory`
does the rest, the same way for both:

1. a plan saved at the plan path under the same key is reused, without probing;
2. on a CPU target, the process's resident baseline is recorded before the probes grow the heap;
3. the probes run forward + backward under measurement, the torch RNG state put back after them
   so that planning does not shift the training RNG stream;
4. the budget is assembled for the target device: its fixed overheads, the static costs of model
   and teacher and, on a CPU target, the process's own lines and the workload's host data;
5. the workload sizes its batches (and may measure again in another variant, keeping the better);
6. the plan is saved under its key and the budget table logged.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, TypeVar

import torch

from pipeline.memory.budget import (
    MemoryBudget,
    cached_plan,
    fixed_overhead,
    host_process_lines,
    process_baseline,
    static_costs,
    write_plan,
)
from pipeline.memory.limits import DeviceMemory, device_memory
from pipeline.memory.measure import ActivationFit, ProbePoint, measure_points

P = TypeVar("P")
"""The workload's plan type (a dataclass, saved as the plan file's "plan" section)."""


@dataclass
class Probes:
    """The probe batches of one measurement, and how to run and count one."""

    batches: Iterable[Any]
    """Made one at a time, each dropped before the next is made."""
    run_step: Callable[[Any], None]
    count: Callable[[Any], tuple[Any, Any]]
    """batch -> (nodes, edges): totals for :class:`ProbePoint`, counts per type for a hetero point."""
    point: Callable[[Any, Any, int], Any] = ProbePoint


@dataclass
class Measured:
    """A fit of the probes: the line the budget table shows, and the workload's own fit."""

    activation: ActivationFit
    detail: Any = None
    """None, or a dataclass whose fields are saved as sections of the plan file (KG: fit, composition)."""


@dataclass
class Attempt(Generic[P]):
    """One measurement and the plan it sized."""

    budget: MemoryBudget
    measured: Measured
    plan: P


@dataclass(frozen=True)
class PlanRequest:
    """Where a plan is cached, and for which device.

    ``target_device``/``target_gb`` plan for a device other than the one probed on (preflight on a
    CPU login node for a GPU job): live tensor bytes are the same on both, only the fixed overheads
    differ. ``count_process`` (default: when the target is the CPU) budgets the process itself: its
    resident baseline and the workload's host data as static lines, glibc's slack as a fixed one.
    False budgets tensors only, as on an accelerator (a benchmark emulating a small device).
    """

    device: torch.device
    safety_factor: float
    plan_path: str | os.PathLike
    key: str
    target_gb: float | None = None
    target_device: str | None = None
    count_process: bool | None = None
    log: Callable[[str], None] = print

    @property
    def target(self) -> torch.device:
        return torch.device(self.target_device) if self.target_device else self.device

    @property
    def counts_process(self) -> bool:
        return self.target.type == "cpu" if self.count_process is None else self.count_process


class Workload(ABC, Generic[P]):
    """What one workload's planner supplies; :func:`plan_memory` does the rest."""

    model: torch.nn.Module
    teacher: torch.nn.Module | None = None
    teacher_in_host_baseline: bool = False
    """On a CPU target, the teacher's parameters are already in the process's resident baseline and
    are not counted again as a static line."""

    @abstractmethod
    def probes(self, variant: Any) -> Probes:
        """The probe batches of one measurement; ``variant`` is None, or what :meth:`refine` asks for."""

    @abstractmethod
    def fit(self, points: list[Any]) -> Measured:
        """The cost model of the measured probe points."""

    def host_lines(self) -> dict[str, int]:
        """Static lines of the data this process holds on the host (counted when the process is)."""
        return {}

    @abstractmethod
    def size(self, budget: MemoryBudget, measured: Measured) -> P:
        """The plan that fits ``budget``; MemoryError when nothing does."""

    @abstractmethod
    def load(self, raw: dict[str, Any]) -> P:
        """The plan from its saved fields."""

    @abstractmethod
    def reused(self, plan: P) -> str:
        """A reused plan in a phrase; also sets the model up as the plan was measured."""

    @abstractmethod
    def describe(self, plan: P) -> str:
        """The plan in a line, logged below the budget table."""

    def warning(self, plan: P) -> str | None:
        """A warning to log about a new plan, if any."""
        return None

    def refine(self, first: Attempt[P], measure: Callable[[Any], Attempt[P]]) -> Attempt[P]:
        """Measure again in another variant and keep the better attempt; by default the first."""
        return first


def plan_memory(workload: Workload[P], request: PlanRequest) -> tuple[MemoryBudget, P]:
    """Reuse the plan cached under ``request.key``, or measure, budget, size and save a new one."""
    cached = cached_plan(request.plan_path, request.key)
    if cached is not None:
        plan = workload.load(cached[1])
        request.log(f"memory plan reused from {request.plan_path}: {workload.reused(plan)}")
        return cached[0], plan
    mem = device_memory(request.device, request.target_gb)
    baseline = process_baseline(workload.model) if request.counts_process else None  # before probes grow the heap

    def measure(variant: Any) -> Attempt[P]:
        measured = probe(workload, variant, request.device)
        budget = assemble_budget(workload, measured.activation, request, mem, baseline)
        return Attempt(budget, measured, workload.size(budget, measured))

    best = workload.refine(measure(None), measure)
    write_plan(request.plan_path, request.key, best.budget, best.plan, best.measured.detail)
    request.log(f"memory budget:\n{best.budget.table()}\n{workload.describe(best.plan)}")
    warning = workload.warning(best.plan)
    if warning:
        request.log(warning)
    return best.budget, best.plan


def probe(workload: Workload[Any], variant: Any, device: torch.device) -> Measured:
    """Measure the workload's probes on ``device`` and fit them, leaving the torch RNG as it was."""
    probes = workload.probes(variant)
    rng_state = torch.get_rng_state()
    try:
        points = measure_points(probes.run_step, probes.batches, device, probes.count, probes.point)
    finally:
        torch.set_rng_state(rng_state)  # probing must not shift the training RNG stream
    workload.model.zero_grad(set_to_none=True)
    return workload.fit(points)


def assemble_budget(workload: Workload[Any], activation: ActivationFit, request: PlanRequest, mem: DeviceMemory,
                    baseline: int | None) -> MemoryBudget:
    """The target device's budget: fixed overheads, static costs and, with a ``baseline``, the process's lines."""
    target = request.target
    teacher = None if target.type == "cpu" and workload.teacher_in_host_baseline else workload.teacher
    fixed, static = fixed_overhead(target, mem.total), static_costs(workload.model, teacher=teacher)
    if baseline is not None:
        host_fixed, host_static = host_process_lines(baseline, mem.total)
        fixed.update(host_fixed)
        static.update(host_static)
        static.update(workload.host_lines())
    return MemoryBudget(device=str(target), total=mem.total, total_source=mem.source,
                        safety_factor=request.safety_factor, fixed=fixed, static=static, activation=activation)


def backward_step(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, Any]],
                  device: torch.device, amp: bool, move_batch: bool = False) -> Callable[[Any], None]:
    """One training step's forward and backward on a probe batch, as training runs it.

    ``move_batch`` copies the batch to ``device`` inside the step, so that the copy counts towards
    the measured peak (batches sampled on the host); otherwise batches arrive on the device.
    """
    def run(batch: Any) -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            loss, _ = loss_fn(model, batch.to(device) if move_batch else batch)
        loss.backward()

    return run
