"""The knowledge-graph chain through the launch layer (submitit's local executor, one process per
stage) on the real PrimeKG fixture: dry-run, status, lose a done marker, resume only what depends on it."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from jobs.__main__ import main
from jobs.selection import done_states
from pipeline.runs import RunDir
from tests.launch_helpers import table_lines

CHAIN = ["preprocess", "teacher", "student", "export"]
TINY = ["train.threads=1", "kg.max_seed_edges=128", "kg.fanouts=[4,2]", "kg.val_edges_per_type=50",
        "kg.eval_negatives=20", "kg.report_sample=200", "kg_model.teacher.hidden=16", "kg_model.teacher.out=16",
        "kg_model.teacher.heads=2", "kg_model.student.hidden=8", "kg_model.student.out=8"]


def _status_states(run: RunDir, capsys) -> dict[str, str]:
    capsys.readouterr()
    assert main(["status", "--run", str(run.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {line.split()[0]: line.split()[1] for line in table_lines(lines)}


def test_primekg_dry_run_status_and_resume(tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    overrides = [arg for o in [f"data.cache_dir={tmp_path / 'cache'}", *TINY] for arg in ("-O", o)]
    assert main(["dry-run", "--profile", "primekg", "--runs-root", str(runs), *overrides]) == 0
    out = capsys.readouterr().out
    (path,) = (runs / "primekg").iterdir()
    run = RunDir(path)
    profile = run.profile()
    assert profile.train.epochs == 2 and profile.data.limit_rows == 50_000  # the dry_run slice was applied
    assert done_states(run, profile) == dict.fromkeys(CHAIN, "done")
    for role in ("teacher", "student"):
        report = run.path / "export" / role / "report.md"
        assert f"report: {report}" in out  # the dry-run names what it produced
        assert pq.read_metadata(run.path / "export" / role / "embeddings.parquet").num_rows == 509
    assert _status_states(run, capsys) == dict.fromkeys(CHAIN, "done")

    teacher_started = run.read_status("teacher")["started"]
    student_started = run.read_status("student")["started"]
    run.clear_done("student")
    assert _status_states(run, capsys) == {"preprocess": "done", "teacher": "done", "student": "stale",
                                           "export": "stale"}
    assert main(["resume", "--run", str(run.path)]) == 0
    history = [(r["stage"], r["action"]) for r in run.read_jobs()["history"]]
    assert history == [(s, "dry-run") for s in CHAIN] + [("student", "resume"), ("export", "resume")]
    assert run.read_status("teacher")["started"] == teacher_started  # never re-run
    assert run.read_status("student")["started"] > student_started
    assert _status_states(run, capsys) == dict.fromkeys(CHAIN, "done")
