"""The registry of workloads and their stages: what runs, what it reads, and in which order.

A workload (a profile's ``task``) names its profile schema, its planner (``make plan``) and its
stages. Each stage is one file with one entry function ``run(ctx) -> dict``; the registry names it
as a ``"module:function"`` string, so the core imports no workload and status or planning never pay
for the torch imports of a stage they do not run.

A stage declares the upstream stages it can read (``needs``; a profile's chain keeps the ones it
runs, see ``chain_needs``) and the profile sections it reads (``reads``: top-level keys such as
``train``, or dotted sub-sections such as ``kg_model.student``). Its fingerprint hashes exactly
those sections and its upstream results (``pipeline.runs.stage_fingerprint``), so changing the
student's model reruns the student and what reads it, never the teachers before it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.errors import InputError

TRAINING_RUNTIME = ("device", "safety_factor", "train")
"""What every training stage reads besides its own sections: the device and its memory budget set
the batch plan, and ``train`` the optimisation."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    entry: str
    """``module:function`` of the stage's entry point."""
    needs: tuple[str, ...] = ()
    """Stages whose outputs this one reads; they must be done first."""
    reads: tuple[str, ...] = ()
    """Profile sections (top-level or dotted) whose values change this stage's result."""
    trains: bool = False
    """Has epochs and checkpoints (resumable mid-run, may run data-parallel)."""

    def load(self) -> Callable[[Any], dict[str, Any]]:
        return resolve(self.entry)


@dataclass(frozen=True)
class Workload:
    task: str
    profile: str
    """``module:Class`` of the workload's profile schema."""
    planner: str
    """``module:function(profile) -> str``: the memory plan of the training stages (``make plan``)."""
    stages: tuple[StageSpec, ...]
    steady_allocations: bool = False
    """Its steps allocate and free large tensors of a steady size: the runner fixes glibc's mmap
    threshold for it (see ``pipeline.hostmem``)."""
    report: str = ""
    """``module:object`` of its part of the run report: a ``pipeline.report.workload.WorkloadReport``
    (its figures, its final metrics per model and split, the headline numbers runs are compared by)."""

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise InputError(f"task {self.task!r} has no stage {name!r}; its stages: {self.stage_names()}")

    def stage_names(self) -> list[str]:
        return [spec.name for spec in self.stages]


def _can() -> Workload:
    stage = "pipeline.can.stages.{}:run".format
    return Workload("can", "pipeline.can.config:CanProfile", "pipeline.can.preflight:plan_report", (
        StageSpec("preprocess", stage("preprocess"), reads=("data",)),
        StageSpec("autoencoder", stage("autoencoder"), ("preprocess",), ("vgae", *TRAINING_RUNTIME), trains=True),
        StageSpec("teacher", stage("teacher"), ("preprocess",), ("model", *TRAINING_RUNTIME), trains=True),
        StageSpec("student", stage("student"), ("preprocess", "teacher", "autoencoder"),
                  ("student_model", "vgae_student", "distill", *TRAINING_RUNTIME), trains=True),
        StageSpec("curriculum", stage("curriculum"), ("preprocess", "autoencoder", "teacher"),
                  ("student_model", "distill", "curriculum", *TRAINING_RUNTIME), trains=True),
        StageSpec("fusion", stage("fusion"), ("preprocess", "teacher", "autoencoder", "student"),
                  ("fusion", "device", "train")),
        StageSpec("export", stage("export"), ("preprocess", "autoencoder", "teacher", "student"),
                  ("device", "train")),
        StageSpec("evaluate", stage("evaluate"),
                  ("preprocess", "autoencoder", "teacher", "student", "curriculum", "fusion"),
                  ("device", "train", "evaluate")),
    ), report="pipeline.can.plots:REPORT")


def _kg() -> Workload:
    stage = "pipeline.kg.stages.{}:run".format
    return Workload("kg", "pipeline.kg.config:KGProfile", "pipeline.kg.preflight:plan_report", (
        StageSpec("preprocess", stage("preprocess"), reads=("data", "kg")),
        StageSpec("teacher", stage("teacher"), ("preprocess",), ("kg", "kg_model.teacher", *TRAINING_RUNTIME),
                  trains=True),
        StageSpec("student", stage("student"), ("preprocess", "teacher"),
                  ("kg", "kg_model.student", "distill", *TRAINING_RUNTIME), trains=True),
        StageSpec("export", stage("export"), ("preprocess", "teacher", "student"), ("kg", "device", "train")),
    ), steady_allocations=True, report="pipeline.kg.plots:REPORT")


WORKLOADS: dict[str, Workload] = {w.task: w for w in (_can(), _kg())}
STAGE_ORDER: tuple[str, ...] = ("preprocess", "autoencoder", "teacher", "student", "curriculum", "fusion",
                                "export", "evaluate")
"""Every stage name of every workload, upstream first (each workload's chain is a subsequence)."""


def workload(task: str) -> Workload:
    try:
        return WORKLOADS[task]
    except KeyError:
        raise InputError(f"unknown task {task!r}; valid: {sorted(WORKLOADS)}") from None


def stage_spec(task: str, stage: str) -> StageSpec:
    return workload(task).stage(stage)


def chain_needs(task: str, stage: str, chain: list[str]) -> tuple[str, ...]:
    """The dependencies of ``stage`` that are part of ``chain`` (a profile may run a sub-chain)."""
    return tuple(dep for dep in stage_spec(task, stage).needs if dep in chain)


def resolve(spec: str) -> Any:
    """The object a ``module:name`` string names (only ever a string of this registry)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
