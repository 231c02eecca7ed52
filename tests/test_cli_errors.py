"""Expected errors through the real command lines (`python -m pipeline.cli`, `python -m jobs`, so
every make target): one line `error: ...` naming the file, exit code 2, the traceback only in the
stage log unless --debug or PIPELINE_DEBUG=1 asks for it; a bug keeps its traceback. And
`python -m jobs plan` for a knowledge-graph profile."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.errors import LaunchError
from pipeline.errors import InputError, UserError, is_expected, one_line
from pipeline.model_registry import CheckpointError
from pipeline.runner import StageError

PROJECT = Path(__file__).resolve().parents[1]
HEADER = "timestamp,arbitration_id,data_field,attack\n"
GOOD_ROWS = [f"{1.0 + i / 100:.2f},{0x100 + i % 3:x},0102030405060708,0\n" for i in range(40)]
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ pipeline\.\w+ (INFO|WARNING) ")
PROGRESS = re.compile(r"^\w+: +\d+%\|")


def run(*args: str, debug_env: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_DEBUG"}
    if debug_env:
        env["PIPELINE_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def console_lines(stderr: str) -> list[str]:
    """stderr without the stage's own progress: its INFO/WARNING log records and progress bars."""
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr)]
    return [line for line in lines if line and not LOG_RECORD.match(line) and not PROGRESS.match(line)]


@pytest.fixture
def bad_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """A can-train-and-test folder whose train file has a non-hex id on line 5; (dataset, bad file)."""
    dataset = tmp_path / "dataset"
    (dataset / "train_01_attack_free").mkdir(parents=True)
    (dataset / "test_01_known").mkdir()
    bad = dataset / "train_01_attack_free" / "a.csv"
    bad.write_text("".join([HEADER, *GOOD_ROWS[:3], "1.035,zzq,0102030405060708,0\n", *GOOD_ROWS[3:]]))
    (dataset / "test_01_known" / "b.csv").write_text("".join([HEADER, *GOOD_ROWS]))
    assert bad.read_text().splitlines()[4].startswith("1.035,zzq")  # line 5 of the file
    return dataset, bad


def test_pipeline_cli_bad_row_is_one_error_line_naming_file_and_line_and_exit_2(tmp_path, bad_dataset):
    dataset, bad = bad_dataset
    run_dir = tmp_path / "run"
    args = ("pipeline.cli", "preprocess", "--run-dir", str(run_dir), "--profile", "local",
            "-O", f"data.dataset={dataset}", "-O", f"data.cache_dir={tmp_path / 'cache'}")
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = console_lines(proc.stderr)     # besides the stage's progress, only the error
    assert line.startswith(f"error: {bad}: line 5: ") and "zzq" in line and "data.bad_rows=skip" in line
    assert line.endswith(f"stage log: {run_dir / 'preprocess' / 'log'}")
    assert proc.stderr.rstrip().endswith(line)
    # the traceback is kept in the stage log, and the status says the user can fix it
    log = (run_dir / "preprocess" / "log").read_text()
    assert "Traceback (most recent call last)" in log and "CanLogError" in log
    status = json.loads((run_dir / "preprocess" / "status.json").read_text())
    assert status["state"] == "failed" and status["user_error"] is True
    assert not list((tmp_path / "cache").glob("*/manifest.json"))   # no cache left behind

    debug = run(*args, "--debug")
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "CanLogError" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1] == line


def test_jobs_dry_run_stage_failure_is_one_line_naming_stage_reason_and_log(tmp_path, bad_dataset):
    dataset, bad = bad_dataset
    runs = tmp_path / "runs"
    args = ("jobs", "dry-run", "--profile", "local", "--runs-root", str(runs),
            "-O", f"data.dataset={dataset}", "-O", f"data.cache_dir={tmp_path / 'cache'}")
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    (run_dir,) = (runs / "local").iterdir()
    assert line.startswith(f"error: stage preprocess failed: {bad}: line 5: ")
    assert f"log: {run_dir / 'preprocess' / 'log'}" in line and f"make resume RUN={run_dir}" in line
    assert "FailedJobError" not in line and "CanLogError" not in line

    debug = run(*args, debug_env=True)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "CanLogError" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith(f"error: stage preprocess failed: {bad}: line 5: ")


@pytest.mark.parametrize("cli", [("jobs", "plan"), ("pipeline.cli", "teacher", "--run-dir", "RUN")])
def test_bad_profile_is_one_line_naming_the_file_and_key(tmp_path, cli):
    profile = tmp_path / "mine.yaml"
    profile.write_text("train:\n  epochs: 3\n  epoch: 4\n")
    args = [str(tmp_path / "run") if a == "RUN" else a for a in cli]
    proc = run(*args, "--profile", str(profile))
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: ") and f"{profile}: train.epoch: unknown key" in line

    debug = run(*args, "--profile", str(profile), "--debug")
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "ProfileError" in debug.stderr


@pytest.mark.parametrize("cli", [("jobs", "dry-run"), ("pipeline.cli", "preprocess", "--run-dir", "RUN")])
def test_missing_dataset_folder_is_one_line(tmp_path, cli):
    missing = tmp_path / "no-such-dataset"
    args = [str(tmp_path / "run") if a == "RUN" else a for a in cli]
    proc = run(*args, "--profile", "local", "-O", f"data.dataset={missing}")
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: ") and f"{missing} does not exist" in line


def test_not_a_run_directory_is_one_line(tmp_path):
    proc = run("pipeline.cli", "teacher", "--run-dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {tmp_path} is not a run directory (no profile.yaml)"]


def test_a_bug_keeps_its_traceback(tmp_path):
    # profile.yaml is a folder: an OSError other than a missing file, which nothing here expects
    (tmp_path / "profile.yaml").mkdir()
    proc = run("pipeline.cli", "teacher", "--run-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "IsADirectoryError" in proc.stderr
    assert not any(line.startswith("error: ") for line in proc.stderr.splitlines())


def test_plan_of_a_kg_profile_plans_its_training_stages(tmp_path):
    cache = tmp_path / "cache"
    proc = run("jobs", "plan", "--profile", "primekg", "-O", f"data.cache_dir={cache}")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("# memory plan for profile primekg")
    for stage in ("teacher", "student"):
        assert f"## {stage}: 1 GPU x 40.0 GB, 32.0 GB host memory" in out
    assert out.count("seed edges per step") == 2 and "CUDA context" in out and "drug" in out
    assert "## preprocess" not in out and "## export" not in out
    # the plan used the cache the preprocess stage will find
    assert len(list(cache.glob("kg-*/manifest.json"))) == 1


def test_input_errors_of_every_reader_and_loader_are_expected_and_bugs_are_not():
    from pipeline.can.data.readers import CanLogError
    from pipeline.can.data.splits import SplitError
    from pipeline.config import ProfileError
    from pipeline.errors import MissingFileError
    from pipeline.kg.reader import KGInputError

    for cls in (UserError, InputError, LaunchError, StageError, CheckpointError, ProfileError, CanLogError,
                SplitError, KGInputError, MissingFileError):
        assert is_expected(cls("x"))
    for cls in (ProfileError, CanLogError, SplitError, KGInputError):
        assert issubclass(cls, ValueError)  # callers that catch ValueError keep working
    for exc in (ValueError("x"), KeyError("x"), ZeroDivisionError(), IsADirectoryError("x"), FileNotFoundError("x")):
        assert not is_expected(exc)


def test_one_line_joins_lines_and_notes():
    exc = InputError("invalid profile:\n  a.yaml: x: bad\n  a.yaml: y: worse")
    exc.add_note("stage log: /r/log")
    assert one_line(exc) == "invalid profile: a.yaml: x: bad; a.yaml: y: worse; stage log: /r/log"
