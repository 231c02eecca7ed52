"""make gpu-check: its harness runs end to end on the CPU with tiny sizes (every check, every row),
a machine without CUDA hears so in one line, and the wheel installer leaves a node's own packages be."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.gpu_check.device import CappedTracker
from bench.gpu_check.report import CheckResult, Report, Row
from bench.gpu_check.run import run_one
from bench.gpu_check.sizes import SMOKE
from pipeline.config import PROJECT_ROOT
from pipeline.memory import is_out_of_memory

SCRIPT = PROJECT_ROOT / "scripts" / "gpu-check.sh"
SUBJECTS = ("GAT teacher", "VGAE", "HGT teacher")


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def expected_keys() -> dict[int, set[str]]:
    """Every row the smoke preset's report must hold, by check."""
    sizes = range(1, len(SMOKE.fractions) + 1)
    devices = [f"{total >> 20}MiB" for total in SMOKE.small_devices]
    return {
        1: {f"1/{s}/{item}" for s in SUBJECTS for item in ("plan", "static", "outside", "worst", "reserved",
                                                            *(f"size{i}" for i in sizes))},
        2: {"2/context"} | {f"2/{s}/{d}/{item}" for s in SUBJECTS for d in devices for item in ("plan", "ooms", "share")},
        3: {f"3/{item}" for item in ("claim", "limit", "plan", "backoffs", "error", "budget", "epoch")},
        4: {f"4/{m}/{item}" for m in ("resident", "offloaded", "cached") for item in ("peak", "error")}
        | {"4/cached-vs-resident", "4/offloaded-vs-resident"},
        5: {"5/teacher", "5/kg"},
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run; a GPU machine runs the real checks")
def test_smoke_run_writes_every_row_of_every_check_and_meets_its_targets(tmp_path):
    out = tmp_path / "out"
    done = run_script(str(out), "--smoke", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    markdown = (out / "gpu-check.md").read_text()
    assert report["ok"] and report["error"] is None and report["meta"]["preset"] == "smoke"
    checks = {c["number"]: c for c in report["checks"]}
    assert set(checks) == {1, 2, 3, 4, 5}
    for number, keys in expected_keys().items():
        check = checks[number]
        assert check["error"] is None and check["seconds"] > 0
        assert {r["key"] for r in check["rows"]} == keys, number
        assert f"## {number}. {check['title']}" in markdown and f"took {check['seconds']:.1f} s" in markdown
        for row in check["rows"]:
            assert row["metric"] in markdown and row["ok"] is not False, row
    rows = {r["key"]: r for c in report["checks"] for r in c["rows"]}
    assert rows["3/backoffs"]["value"] >= 1 and "out of memory" in rows["3/error"]["value"]
    assert all(rows[f"2/{s}/{d >> 20}MiB/ooms"]["value"] == 0 for s in SUBJECTS for d in SMOKE.small_devices)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tells a machine without CUDA so")
def test_without_cuda_the_command_says_so_in_one_line_and_runs_nothing(tmp_path):
    done = run_script(str(tmp_path / "out"))
    assert done.returncode == 3
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--smoke" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_one_line_with_exit_code_2(tmp_path):
    done = run_script(str(tmp_path / "out"), "--smoke", "--only", "7")
    assert done.returncode == 2 and "--only takes check numbers 1-5" in done.stderr
    assert run_script().returncode == 2


def test_wheels_needed_lists_what_this_python_lacks_or_has_older(tmp_path):
    from importlib import metadata

    pydantic = metadata.version("pydantic")
    for name in (f"pydantic-{pydantic}-py3-none-any.whl", "pydantic-0.1-py3-none-any.whl",
                 "no_such_dist_gpu_check-1.0-py3-none-any.whl", "typing_extensions-999.0-py3-none-any.whl",
                 "numpy-0.1-cp312-cp312-manylinux_2_17_x86_64.whl", "README.txt"):
        (tmp_path / name).write_bytes(b"")
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "wheels_needed.py"), str(tmp_path)],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["no-such-dist-gpu-check==1.0", "typing-extensions==999.0"]


def test_the_cpu_stand_in_for_a_small_device_fails_allocations_as_the_allocator_does():
    w = torch.ones(256, 256, requires_grad=True)
    with CappedTracker(limit=300 * 1024):
        small = w * 2                               # 256 KiB: fits
        host = torch.zeros(512, 512)                # 1 MiB of host bookkeeping: counted, never fails
        with pytest.raises(torch.OutOfMemoryError) as err:
            w @ torch.ones(256, 1024)               # a forward op past the limit
    assert is_out_of_memory(err.value) and small.shape == (256, 256) and host.numel() == 512 * 512


def test_a_missed_target_or_a_broken_check_fails_the_report_and_the_next_check_still_runs(tmp_path):
    def broken() -> list[Row]:
        raise RuntimeError("no such tensor")

    crashed = run_one(3, broken, torch.device("cpu"))
    fine = CheckResult(5, "Throughput", [Row("5/x", "graphs/s", 10.0)])
    missed = CheckResult(1, "Estimate", [Row("1/x", "error", 0.2, "-5% .. +10%", False)])
    report = Report({"device": "cpu"}, [crashed, fine])
    assert crashed.failed and "RuntimeError: no such tensor" in crashed.error and not report.ok
    assert Report({"device": "cpu"}, [fine]).ok and not Report({"device": "cpu"}, [fine, missed]).ok
    report.write(tmp_path)
    assert "stopped by an error" in (tmp_path / "gpu-check.md").read_text()
    assert json.loads((tmp_path / "gpu-check.json").read_text())["ok"] is False
