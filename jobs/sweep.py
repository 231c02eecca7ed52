"""Sweeps: many runs (profiles x seeds) submitted as one job array per stage where SLURM allows it.

A sweep of N runs would otherwise cost N sbatch calls per stage and N jobs for the scheduler to
track. Runs whose stage asks for the same resources share one array (``executor.batch()`` in
submitit); a dependant stage's array waits on its upstream arrays with ``aftercorr``, so task i
starts when task i upstream succeeded and only task i is cancelled when it failed: one seed's
failure never touches another seed.

``aftercorr`` pairs tasks by index, so an array is only used when every member's upstream jobs
are the tasks at the same index of the same arrays. Otherwise (runs whose resources differ
between stages, or a resume that waits on jobs still in the queue) the stage is submitted run by
run with ``afterok`` on the exact upstream tasks (``afterok:<array>_<i>``).

A sweep keeps ``runs/_sweeps/<id>/sweep.json`` (its runs and arrays) and the arrays' logs;
``make status`` and ``make resume`` accept that folder and act on every run in it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

from jobs.errors import LaunchError
from pipeline import io
from pipeline.config import Profile, load_profile
from pipeline.runs import RunDir
from pipeline.stages import STAGE_ORDER

SWEEPS_DIR = "_sweeps"
SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class Submission:
    """One sbatch call: a single job, or an array whose task i is run ``members[i]``."""

    stage: str
    members: tuple[int, ...]
    """Indexes of the runs (into the launched plans), in array task order."""
    depends_on: tuple[str, ...]
    """Job ids to wait for: upstream jobs (afterok) or, for an array, upstream arrays (aftercorr)."""
    array: bool


def stage_order(chains: Sequence[Sequence[str]]) -> list[str]:
    """Every stage of the chains, in the registry's order (upstream stages first)."""
    present = {stage for chain in chains for stage in chain}
    return [stage for stage in STAGE_ORDER if stage in present]


def group_submissions(
    stage: str,
    members: Sequence[int],
    keys: Mapping[int, Hashable],
    upstream: Mapping[int, Mapping[str, str]],
    arrays: bool = True,
) -> list[Submission]:
    """How to submit ``stage`` for ``members``: arrays of runs with equal ``keys`` (their sbatch
    parameters) that wait on the same upstream arrays (``upstream``: dependency stage -> job id),
    where task k of the new array is task k of each of those; single jobs for everyone else.
    Order is kept: runs keep their relative order inside an array."""
    groups: dict[Hashable, list[int]] = {}
    for member in members:
        waits_on = tuple(sorted((dep, job.partition("_")[0]) for dep, job in upstream[member].items()))
        groups.setdefault((keys[member], waits_on), []).append(member)
    out: list[Submission] = []
    for group in groups.values():
        aligned = _aligned_arrays(group, upstream) if arrays and len(group) > 1 else None
        if aligned is not None:
            out.append(Submission(stage, tuple(group), tuple(aligned), array=True))
            continue
        out += [Submission(stage, (m,), tuple(upstream[m].values()), array=False) for m in group]
    return sorted(out, key=lambda s: s.members[0])


def _aligned_arrays(group: list[int], upstream: Mapping[int, Mapping[str, str]]) -> list[str] | None:
    """Upstream array ids if member k of ``group`` depends on task k of each of them; else None."""
    stages = set(upstream[group[0]])
    if any(set(upstream[m]) != stages for m in group):
        return None
    arrays = []
    for dep in sorted(stages):
        bases = set()
        for index, member in enumerate(group):
            base, _, task = upstream[member][dep].partition("_")
            if task != str(index):
                return None
            bases.add(base)
        if len(bases) != 1:
            return None
        arrays.append(bases.pop())
    return arrays


def array_name(profiles: Sequence[Profile], stage: str) -> str:
    """The job name of an array: <profile>-<stage>, or sweep-<stage> when profiles differ."""
    names = {p.name for p in profiles}
    return f"{names.pop()}-{stage}" if len(names) == 1 else f"sweep-{stage}"


# -- the sweep's profiles and its folder ---------------------------------------------------------

def profile_names(spec: str) -> list[str]:
    """``--profile set_01,set_02`` -> ['set_01', 'set_02'] (each a name or a YAML path)."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise LaunchError("--profile is empty; give a profile name, a YAML path, or several separated by commas")
    if len(set(names)) != len(names):
        raise LaunchError(f"--profile {spec}: a profile is listed twice; use --seeds for repeated runs")
    return names


def sweep_profiles(spec: str, overrides: list[str], seeds: int) -> list[tuple[Profile, str]]:
    """(profile, run id suffix) per run: every profile of ``spec`` with train.seed, seed+1, ..."""
    if seeds < 1:
        raise LaunchError(f"--seeds must be at least 1, got {seeds}")
    runs = []
    for name in profile_names(spec):
        base = load_profile(name, overrides)
        if seeds == 1:
            runs.append((base, ""))
            continue
        for i in range(seeds):
            seed = base.train.seed + i
            runs.append((load_profile(name, [*overrides, f"train.seed={seed}"]), f"-seed{seed}"))
    names = [p.name for p, _ in runs]
    if len(set(zip(names, (s for _, s in runs)))) != len(runs):
        raise LaunchError(f"--profile {spec}: two profiles share the name {names}; their runs would share a folder")
    return runs


def write_sweep(folder: Path, runs: Sequence[RunDir], submissions: Sequence[dict[str, Any]]) -> Path:
    path = folder / SWEEP_FILE
    io.write_json(path, {"runs": [str(r.path) for r in runs], "submissions": list(submissions)})
    return path


def sweep_runs(path: str | os.PathLike) -> list[RunDir] | None:
    """The runs of a sweep folder, or None if ``path`` is not one."""
    file = Path(path) / SWEEP_FILE
    if not file.exists():
        return None
    try:
        return [RunDir(p) for p in json.loads(file.read_text())["runs"]]
    except (ValueError, KeyError) as exc:
        raise LaunchError(f"{file}: not a sweep file ({exc}); pass one run with RUN=runs/<profile>/<run_id>") from None
