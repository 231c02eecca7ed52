"""Tiny profiles and runs for the autoencoder, student, curriculum and export stages.

The teachers (autoencoder and GAT) are trained once per test session (``shared_teachers``); each
test then gets a fresh run (``fresh_run``) on its own copy of the graph cache, so the caches it
writes beside it (teacher outputs, difficulty scores) are its own.
"""
from __future__ import annotations

import atexit
import functools
import gc
import shutil
import tempfile
from pathlib import Path

from pipeline.can.config import CanProfile
from pipeline.runner import fingerprint_for, run_stage
from pipeline.runs import RunDir
from tests.helpers import run_with_cache, tiny_profile, write_synthetic_cache

FULL_CHAIN = "stages=[preprocess,autoencoder,teacher,student,curriculum,evaluate,export]"
SMALL = [
    "student_model.hidden=4", "student_model.heads=1", "student_model.layers=1", "student_model.id_embed_dim=2",
    "student_model.mlp_hidden=8",
    "vgae.hidden=8", "vgae.heads=2", "vgae.latent_dim=8", "vgae.id_embed_dim=8",
    "vgae_student.hidden=4", "vgae_student.heads=1", "vgae_student.latent_dim=4", "vgae_student.id_embed_dim=2",
    "train.epochs=3",
]
TEACHERS = ("autoencoder", "teacher")

# torch, PyG and sklearn leave ~400k long-lived objects; the memory planner runs gc.collect()
# before every probe, which then costs ~1 s each on a busy machine. Frozen objects are skipped.
gc.collect()
gc.freeze()


def kd_profile(overrides: list[str] | None = None) -> CanProfile:
    """The tiny test profile with the full CAN chain and students well under 1/5 of their teachers."""
    return tiny_profile([FULL_CHAIN, *SMALL, *(overrides or [])])


def upstream_run(root: Path, overrides: list[str] | None = None, stages: tuple[str, ...] = TEACHERS) -> RunDir:
    """A run on a fresh synthetic cache with ``stages`` done (the teachers, by default)."""
    cache = write_synthetic_cache(root / "cache")
    run = run_with_cache(root, kd_profile(overrides), cache)
    for stage in stages:
        run_stage(run.path, stage)
    return run


@functools.lru_cache(maxsize=None)
def shared_teachers() -> RunDir:
    """Autoencoder and teacher trained once per session on the synthetic cache."""
    root = Path(tempfile.mkdtemp(prefix="kd-teachers-"))
    atexit.register(shutil.rmtree, root, True)
    return upstream_run(root)


def fresh_run(root: Path, overrides: list[str] | None = None) -> RunDir:
    """A new run whose preprocess points at a private copy of the cache and whose teachers are the
    shared ones (their done records are copied, so the next stages read the same checkpoints)."""
    teachers = shared_teachers()
    source_cache = Path(teachers.done_record("preprocess")["cache_dir"])
    cache = root / "cache"
    cache.mkdir(parents=True)
    for path in source_cache.iterdir():
        if path.is_file():
            shutil.copy2(path, cache / path.name)
    profile = kd_profile(overrides)
    run = run_with_cache(root, profile, cache)
    for stage in TEACHERS:
        if stage in profile.stages:
            record = {k: v for k, v in teachers.done_record(stage).items() if k != "fingerprint"}
            run.mark_done(stage, fingerprint_for(run, profile, stage), record)
    return run
