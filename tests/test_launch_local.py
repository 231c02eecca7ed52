"""End to end through submitit's local executor on the bundled real sample (data/sample/hcrl_sa):
dry-run the chain, read its status, lose a done marker, resume."""
from __future__ import annotations

from pathlib import Path

from jobs.__main__ import main
from jobs.selection import done_states
from pipeline.runs import RunDir
from tests.launch_helpers import table_lines

CHAIN = ["preprocess", "teacher", "evaluate"]


def _only_run(runs: Path) -> RunDir:
    (path,) = (runs / "local").iterdir()
    return RunDir(path)


def _status_states(run: RunDir, capsys) -> dict[str, str]:
    capsys.readouterr()
    assert main(["status", "--run", str(run.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {line.split()[0]: line.split()[1] for line in table_lines(lines)}


def test_dry_run_then_resume_reruns_only_the_lost_stage_and_its_dependants(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["--profile", "local", "--runs-root", str(runs),
            "-O", f"data.cache_dir={tmp_path / 'cache'}", "-O", "train.epochs=2"]
    assert main(["dry-run", *args]) == 0
    out = capsys.readouterr().out
    run = _only_run(runs)
    metrics = run.path / "evaluate" / "metrics.md"
    assert f"metrics: {metrics}" in out
    assert metrics.read_text().strip() in out and "| teacher | test_01" in out
    assert done_states(run, run.profile()) == dict.fromkeys(CHAIN, "done")
    assert run.read_jobs()["executor"] == "local"
    assert _status_states(run, capsys) == dict.fromkeys(CHAIN, "done")

    preprocess_started = run.read_status("preprocess")["started"]
    teacher_started = run.read_status("teacher")["started"]
    run.clear_done("teacher")
    assert _status_states(run, capsys) == {"preprocess": "done", "teacher": "stale", "evaluate": "stale"}

    assert main(["resume", "--run", str(run.path)]) == 0
    history = run.read_jobs()["history"]
    assert [(r["stage"], r["action"]) for r in history] == [
        ("preprocess", "dry-run"), ("teacher", "dry-run"), ("evaluate", "dry-run"),
        ("teacher", "resume"), ("evaluate", "resume"),
    ]
    assert run.read_status("preprocess")["started"] == preprocess_started  # never re-run
    assert run.read_status("teacher")["started"] > teacher_started
    assert done_states(run, run.profile()) == dict.fromkeys(CHAIN, "done")

    capsys.readouterr()
    assert main(["resume", "--run", str(run.path)]) == 0
    assert "every stage is done" in capsys.readouterr().out
    assert len(run.read_jobs()["history"]) == 5


def test_failed_stage_names_itself_and_its_log_and_stops_the_chain(tmp_path, capsys):
    runs = tmp_path / "runs"
    # The sample is can-train-and-test CSV; reading it as Car-Hacking text fails on line 1.
    rc = main(["dry-run", "--profile", "local", "--runs-root", str(runs),
               "-O", f"data.cache_dir={tmp_path / 'cache'}", "-O", "data.layout=car_hacking_txt"])
    assert rc == 2   # bad data: the user fixes it
    [line] = capsys.readouterr().err.splitlines()
    run = _only_run(runs)
    assert line.startswith("error: stage preprocess failed: ") and "line 1" in line
    assert f"log: {run.path / 'preprocess' / 'log'}" in line
    assert f"make resume RUN={run.path}" in line
    assert list(run.read_jobs()["stages"]) == ["preprocess"]
    assert _status_states(run, capsys) == {"preprocess": "failed", "teacher": "pending", "evaluate": "pending"}
