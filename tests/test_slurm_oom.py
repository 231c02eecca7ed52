"""A training stage killed for exceeding its --mem on the real local cluster: status reports
out_of_memory with what was requested and what the stage's memory plan expected, and resume gives it
more memory from the command line without editing any file; the resumed job plans again for it.

Why it runs out: the planner counts the process itself on a CPU budget (its resident baseline, the
mapped cache, glibc's slack), so a plan for the job's own --mem fits. The first submission therefore
tells the planner that the job has 1.5 GB (``PIPELINE_MEMORY_GB``, exported to the job by sbatch)
while it asks SLURM for 0.5 GB: a wide model with a batch cap above the data size fills the planned
budget, and the cgroup kills the stage mid-epoch. The resume drops the override and asks for 2 GB;
the plan key holds the device total, so the resumed job plans for the 2 GB it now has, and completes.
"""
from __future__ import annotations

import json

import pytest

from jobs.records import latest_records
from jobs.status import status_report
from pipeline.memory import MEMORY_GB_ENV, GiB
from tests.launch_helpers import cancel_on_failure, job_ids, only_run, run_cli, wait_jobs_ended, wait_settled

pytest_plugins = ["tests.slurm_cluster"]
pytestmark = pytest.mark.slurm

STAGES = ["preprocess", "teacher"]


def _budget(run) -> dict:
    return json.loads((run.path / "teacher" / "memory_plan.json").read_text())["budget"]


def test_memory_kill_is_reported_with_plan_and_resume_raises_the_request(slurm_cluster, ci_cache, tmp_path, capsys,
                                                                          monkeypatch):
    if slurm_cluster.mem_mode != "cgroup":
        pytest.skip("without cgroup memory enforcement SLURM does not kill by --mem reliably")
    monkeypatch.setenv(MEMORY_GB_ENV, "1.5")   # the plan overcommits: 1.5 GB planned, 0.5 GB granted
    run_cli("submit", "--profile", "ci", "--runs-root", str(tmp_path / "runs"), "-O", f"data.cache_dir={ci_cache}",
            "-O", "stages=[preprocess,teacher]", "-O", "resources.teacher.mem_gb=0.5", "-O", "model.hidden=32",
            "-O", "model.heads=8", "-O", "train.batch_size=480", "-O", "train.epochs=1")
    monkeypatch.delenv(MEMORY_GB_ENV)
    run = only_run(tmp_path / "runs")
    first = job_ids(run)
    with cancel_on_failure(slurm_cluster, lambda: [run]):
        states = wait_settled(run, STAGES, timeout=240)
        assert states == {"preprocess": "done", "teacher": "out_of_memory"}, status_report(run.path)
        planned = _budget(run)
        assert planned["total"] == int(1.5 * GiB) and planned["total_source"] == MEMORY_GB_ENV
        assert planned["static"]["interpreter and libraries (RSS)"] > 0   # counted, yet 0.5 GB was not 1.5 GB
        capsys.readouterr()
        run_cli("status", "--run", str(run.path))
        out = capsys.readouterr().out
        assert "stage teacher out of memory: requested 0.5G (--mem) was not enough; planned " in out
        assert "within 1.50G of cpu memory (teacher/memory_plan.json)" in out
        assert f"make resume RUN={run.path} O=resources.teacher.mem_gb=1" in out
        assert f"log: {latest_records(run)['teacher']['stderr']}" in out  # SLURM's stderr says oom-kill

        run_cli("resume", "--run", str(run.path), "-O", "resources.teacher.mem_gb=2")
        second = job_ids(run)
        assert second["preprocess"] == first["preprocess"] and second["teacher"] != first["teacher"]
        script = (run.path / "logs" / second["teacher"] / f"{second['teacher']}_submission.sh").read_text()
        assert "#SBATCH --mem=2GB" in script
        assert run.profile().resources_for("teacher").mem_gb == 2  # frozen into the run, no file edited by hand

        assert wait_settled(run, STAGES, timeout=240) == dict.fromkeys(STAGES, "done")
        ended = wait_jobs_ended(slurm_cluster, [run])
        assert ended[second["teacher"]] == "COMPLETED"
        assert ended[first["teacher"]] == slurm_cluster.oom_state or ended[first["teacher"]] == "FAILED"
        # the resumed job planned again, for the memory it was given (not the old plan's 1.5 GB)
        replanned = _budget(run)
        # read from the job's own cgroup under task/cgroup enforcement, else from its --mem
        source = replanned["total_source"]
        assert replanned["total"] == 2 * GiB
        if slurm_cluster.mem_mode == "cgroup":
            assert source.startswith("cgroup ") and f"job_{second['teacher']}" in source, source
        else:
            assert source == "SLURM_MEM_PER_NODE", source
        assert replanned["static"]["interpreter and libraries (RSS)"] > 0
        assert "memory plan reused" not in (run.path / "teacher" / "log").read_text()   # both attempts planned
