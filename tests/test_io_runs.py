"""Atomic writes and run directories."""
import pytest

from pipeline import io
from pipeline.config import load_profile
from pipeline.runs import RunDir, stage_fingerprint


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_whole(tmp_path):
    target = tmp_path / "cache"
    with io.atomic_path(target, is_dir=True) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError):
        with io.atomic_path(target, is_dir=True) as tmp:
            (tmp / "b").write_text("2")
            raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_run_dir_freezes_profile_and_tracks_done(tmp_path):
    profile = load_profile("local")
    run = RunDir.create(profile, root=tmp_path, run_id="r1")
    assert run.path == (tmp_path / "local" / "r1").resolve()
    assert run.profile() == profile
    fp = stage_fingerprint(profile, "preprocess", {})
    assert not run.is_done("preprocess", fp)
    run.mark_done("preprocess", fp, {"result_key": "abc"})
    assert run.is_done("preprocess", fp)
    assert not run.is_done("preprocess", stage_fingerprint(profile, "preprocess", {"x": "y"}))
    # overrides on a frozen profile change the fingerprint unless they only touch resources
    assert stage_fingerprint(run.profile(["resources.teacher.mem_gb=2"]), "preprocess", {}) == fp
    assert stage_fingerprint(run.profile(["data.window=50"]), "preprocess", {}) != fp


def test_atomic_files_follow_the_umask(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644
