"""Which stages of a run are done, and which a resume must launch.

A stage counts as done only if its done.json fingerprint equals what ``fingerprint_for`` computes
now (same profile without resources, same upstream results) and every stage it reads is done
too. Status and resume share this, so what status calls done is exactly what resume skips.
"""
from __future__ import annotations

from typing import Literal, Mapping, Sequence

from pipeline.config import Profile
from pipeline.runner import StageError, fingerprint_for
from pipeline.runs import RunDir
from pipeline.stages import chain_needs

DoneState = Literal["done", "stale"] | None


def chain_dependencies(task: str, chain: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """stage -> the stages of ``chain`` (of a profile of ``task``) it reads."""
    return {stage: chain_needs(task, stage, list(chain)) for stage in chain}


def done_states(run: RunDir, profile: Profile) -> dict[str, DoneState]:
    """Per stage of the chain: 'done' (marker matches), 'stale' (marker from other inputs, or an
    upstream stage is not done) or None (no marker)."""
    states: dict[str, DoneState] = {}
    needs = chain_dependencies(profile.task, profile.stages)
    for stage in profile.stages:
        record = run.done_record(stage)
        if record is None:
            states[stage] = None
        elif any(states[dep] != "done" for dep in needs[stage]):
            states[stage] = "stale"
        else:
            try:
                current = fingerprint_for(run, profile, stage)
            except StageError:
                states[stage] = "stale"
                continue
            states[stage] = "done" if record.get("fingerprint") == current else "stale"
    return states


def plan_resume(
    chain: Sequence[str],
    needs: Mapping[str, Sequence[str]],
    done: set[str],
    queued: set[str] = frozenset(),
) -> tuple[list[str], list[str]]:
    """(stages to launch, stages whose queued job is kept), both in chain order.

    A stage is launched when it is not done, or when a stage it reads is launched (its result
    would change). A stage still pending or running in the queue is kept, and its job id becomes
    a dependency, unless something upstream is relaunched: then its queued job waits on a
    dead dependency and is replaced. A done stage is never launched; when a relaunched upstream
    stage leaves its inputs unchanged, the runner's own done check skips it anyway.
    """
    launch: list[str] = []
    keep: list[str] = []
    for stage in chain:
        upstream_relaunched = any(dep in launch for dep in needs.get(stage, ()))
        if stage in done and not upstream_relaunched:
            continue
        if stage in queued and not upstream_relaunched:
            keep.append(stage)
            continue
        launch.append(stage)
    return launch, keep
