"""Stages: one file each, one entry function ``run(ctx) -> dict`` each.

``needs`` lists every stage a stage can read from; a profile's chain keeps the ones it runs
(``chain_needs``), so the CAN chain (preprocess, autoencoder, teacher, student, curriculum,
evaluate) and the knowledge-graph chain (preprocess, teacher, student, export) share the registry.

The registry names each stage's module and the stages it reads from. Modules are imported
only when the stage runs, so status and planning never pay for torch imports they don't need.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class StageSpec:
    name: str
    needs: tuple[str, ...]
    """Stages whose outputs this one reads; they must be done first."""
    trains: bool = False
    """Has epochs and checkpoints (resumable mid-run)."""

    def entry(self) -> Callable:
        return importlib.import_module(f"pipeline.stages.{self.name}").run


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec("preprocess", ()),
        StageSpec("autoencoder", ("preprocess",), trains=True),
        StageSpec("teacher", ("preprocess",), trains=True),
        StageSpec("student", ("preprocess", "teacher", "autoencoder"), trains=True),
        StageSpec("curriculum", ("preprocess", "autoencoder", "teacher"), trains=True),
        StageSpec("export", ("preprocess", "autoencoder", "teacher", "student")),
        StageSpec("evaluate", ("preprocess", "autoencoder", "teacher", "student", "curriculum")),
    )
}


def chain_needs(stage: str, chain: list[str]) -> tuple[str, ...]:
    """The dependencies of ``stage`` that are part of ``chain`` (a profile may run a sub-chain)."""
    return tuple(dep for dep in STAGES[stage].needs if dep in chain)
