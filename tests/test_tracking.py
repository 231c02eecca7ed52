"""The tracking import against a real MLflow: a real ``mlflow server`` read back over its REST API,
8 concurrent ``track`` processes on one SQLite store, re-tracking that changes nothing, changed
records that replace a run, the chain's last step, and tracking keys that rerun no stage."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from jobs.__main__ import main
from jobs.stage_job import StageJob
from jobs.track import finish_run
from pipeline.config import PROJECT_ROOT, load_profile
from pipeline.runs import RunDir, stage_fingerprint
from pipeline.stages import WORKLOADS
from pipeline.tracking.store import DEFAULT_DB, KEY_TAG, client_for, store_for
from tests.report_helpers import EPOCHS, copy_run, tiny_can_run

STAGES = ["preprocess", "teacher", "evaluate"]


@pytest.fixture(scope="module")
def can_run(tmp_path_factory) -> RunDir:
    return tiny_can_run(tmp_path_factory.mktemp("tracking"))


def _client(db: Path):
    return client_for(store_for(f"sqlite:///{db}", db.parent))


def _active_runs(db: Path) -> list:
    client = _client(db)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], max_results=1000)]


def _snapshot(db: Path) -> dict:
    """Everything a run holds, by MLflow run id."""
    client = _client(db)
    out = {}
    for run in _active_runs(db):
        rid = run.info.run_id
        out[rid] = {"params": run.data.params, "tags": run.data.tags, "status": run.info.status,
                    "history": {k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, k)]
                                for k in run.data.metrics},
                    "artifacts": sorted(a.path for a in client.list_artifacts(rid))}
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, **query) -> bytes:
    with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return response.read()


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on a free localhost port with its own SQLite store and artifact folder; stopped after."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"{url}/health") == b"OK":
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGINT)   # as Ctrl-C: the server stops its workers
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)   # whatever of its group is still shutting down
        server.wait(timeout=30)
        log.close()


def test_a_run_tracked_to_a_server_reads_back_over_its_rest_api(can_run, mlflow_server):
    assert main(["track", "--run", str(can_run.path), "-O", f"tracking.uri={mlflow_server}"]) == 0
    api = f"{mlflow_server}/api/2.0/mlflow"
    exp_id = json.loads(_get(f"{api}/experiments/get-by-name", experiment_name="can"))["experiment"]["experiment_id"]
    runs = _post(f"{api}/runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert set(by_name) == {"local/r", *STAGES}
    teacher = by_name["teacher"]
    params = {p["key"]: p["value"] for p in teacher["data"]["params"]}
    assert params["train.epochs"] == str(EPOCHS) and params["model.hidden"] == "8"
    assert not any(key.startswith("resources.") for key in params)   # resources are tags
    tags = {t["key"]: t["value"] for t in teacher["data"]["tags"]}
    assert tags["mlflow.parentRunId"] == by_name["local/r"]["info"]["run_id"]
    assert tags["gnn.state"] == "done" and tags["resources.mem_gb"] == "4.0" and tags["gnn.cache_key"] == "synthetic"

    history = json.loads(_get(f"{api}/metrics/get-history", run_id=teacher["info"]["run_id"], metric_key="train_loss"))
    lines = [json.loads(line) for line in (can_run.path / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["value"]) for m in history["metrics"]] == [(e["epoch"], e["train_loss"]) for e in lines]

    png = _get(f"{mlflow_server}/get-artifact", path="curves.png", run_uuid=teacher["info"]["run_id"])
    assert png == (can_run.path / "teacher" / "curves.png").read_bytes()
    evaluate = {m["key"]: m["value"] for m in by_name["evaluate"]["data"]["metrics"]}
    rows = json.loads((can_run.path / "evaluate" / "metrics.json").read_text())["rows"]
    assert evaluate["teacher/test_01_known/f1"] == pytest.approx(rows[1]["f1"])
    for key in ("auroc", "average_precision", "mcc", "trivial_f1", "oracle_f1"):
        assert evaluate[f"teacher/test_01_known/{key}"] == pytest.approx(rows[1][key]), key


def test_eight_track_processes_at_once_lose_nothing_and_duplicate_nothing(can_run, tmp_path):
    runs = tmp_path / "runs"
    members = [copy_run(can_run, runs, f"c{i}") for i in range(4)]
    # each run is tracked by two of the eight processes at the same time
    procs = [subprocess.Popen([sys.executable, "-m", "jobs", "track", "--run", str(members[i % 4].path)],
                              cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(8)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outputs
    found = _active_runs(runs / DEFAULT_DB)
    keys = [r.data.tags[KEY_TAG] for r in found]
    assert len(keys) == len(set(keys)) == 4 * (1 + len(STAGES))
    chains = {r.info.run_name: r.info.run_id for r in found if r.data.tags["gnn.kind"] == "chain"}
    assert set(chains) == {f"local/c{i}" for i in range(4)}
    for run in found:
        if run.data.tags["gnn.kind"] == "stage":
            assert run.data.tags["mlflow.parentRunId"] == chains[run.data.tags["gnn.run"]]
    assert sum("0 written" in out for out in outputs) == 4   # the second import of each run found it done


def test_tracking_again_changes_nothing_and_changed_records_replace_the_run(can_run, tmp_path, capsys):
    run = copy_run(can_run, tmp_path / "runs", "again")
    db = tmp_path / "runs" / DEFAULT_DB
    assert main(["track", "--run", str(run.path)]) == 0
    before = _snapshot(db)
    assert main(["track", "--run", str(run.path)]) == 0
    assert "0 written, 4 unchanged" in capsys.readouterr().out
    assert _snapshot(db) == before

    # one more epoch (a resumed stage): the teacher's history is replaced, never appended to
    metrics = run.path / "teacher" / "metrics.jsonl"
    last = json.loads(metrics.read_text().splitlines()[-1])
    with metrics.open("a") as fh:
        fh.write(json.dumps({**last, "epoch": EPOCHS + 1, "train_loss": 0.5}) + "\n")
    assert main(["track", "--run", str(run.path)]) == 0
    after = _snapshot(db)
    teacher = [v for v in after.values() if v["tags"].get("gnn.stage") == "teacher"]
    assert len(teacher) == 1 and teacher[0] not in before.values()
    assert [s for s, _, _ in teacher[0]["history"]["train_loss"]] == list(range(1, EPOCHS + 2))
    # remade: the teacher and the chain (its report shows the new curve); kept: the other stages, now
    # under the new chain run
    made = {v["tags"].get("gnn.stage", "chain") for k, v in after.items() if k not in before}
    assert made == {"teacher", "chain"}
    chain = next(k for k, v in after.items() if v["tags"]["gnn.kind"] == "chain")
    kept = {k: v for k, v in after.items() if k in before}
    assert {v["tags"]["gnn.stage"] for v in kept.values()} == {"preprocess", "evaluate"}
    assert all(v["tags"]["mlflow.parentRunId"] == chain for v in kept.values())


def test_the_last_step_of_a_chain_reports_and_tracks_unless_disabled(can_run, tmp_path, capsys):
    tracked = copy_run(can_run, tmp_path / "on", "r")
    StageJob(1, finish=True)(str(tracked.path), "evaluate")   # done already: the job only takes the last step
    out = capsys.readouterr().out
    assert f"report: {tracked.path / 'report.html'}" in out and "tracked: 4 MLflow runs" in out
    assert len(_active_runs(tmp_path / "on" / DEFAULT_DB)) == 4

    silent = copy_run(can_run, tmp_path / "off", "r")
    frozen = yaml.safe_load(silent.profile_path.read_text())
    silent.profile_path.write_text(yaml.safe_dump({**frozen, "tracking": {"enabled": False}}))
    finish_run(silent)
    assert (silent.path / "report.html").exists() and not (tmp_path / "off" / DEFAULT_DB).exists()

    unfinished = copy_run(can_run, tmp_path / "part", "r")
    (unfinished.path / "report.html").unlink()
    unfinished.clear_done("evaluate")
    StageJob(1, finish=True)(str(unfinished.path), "teacher")
    assert not (unfinished.path / "report.html").exists() and not (tmp_path / "part" / DEFAULT_DB).exists()


def test_a_last_step_that_cannot_reach_the_server_warns_and_leaves_the_chain_done(can_run, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run = copy_run(can_run, tmp_path / "runs", "offline")
    frozen = yaml.safe_load(run.profile_path.read_text())
    run.profile_path.write_text(yaml.safe_dump({**frozen, "tracking": {"uri": f"http://127.0.0.1:{_free_port()}"}}))
    finish_run(run)   # nothing listens there
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"report: {run.path / 'report.html'}"
    assert lines[1].startswith(f"warning: tracking {run.path} failed: ") and lines[1].endswith(
        f"(retry: make track RUN={run.path})") and len(lines) == 2


@pytest.mark.parametrize("profile", ["local", "primekg"])
def test_tracking_keys_change_no_stage_fingerprint(profile):
    base = load_profile(profile, check_paths=False)
    moved = load_profile(profile, ["tracking.uri=http://mlflow.example.org:5000", "tracking.enabled=false",
                                   "tracking.experiment=elsewhere"], check_paths=False)
    for stage in WORKLOADS[base.task].stage_names():
        assert stage_fingerprint(base, stage, {}) == stage_fingerprint(moved, stage, {}), stage


def test_track_refuses_overrides_other_than_tracking(can_run, capsys):
    assert main(["track", "--run", str(can_run.path), "-O", "train.epochs=9"]) == 2
    assert "track takes only tracking.* overrides" in capsys.readouterr().err
