"""A training stage killed for exceeding its --mem on the real local cluster: status reports
out_of_memory with what was requested and what the stage's memory plan expected, and resume gives it
more memory from the command line without editing any file.

Why it runs out: on the CPU the batch planner budgets the job's --mem for tensors (model state and
activations of a batch, with a fragmentation reserve), and a wide model with a batch cap above the
data size makes it fill that budget; the process itself (Python, torch, the mapped cache) needs a
few hundred MB on top, so the cgroup kills it mid-epoch. With twice the memory the same plan (it is
reused on resume) fits.
"""
from __future__ import annotations

import pytest

from jobs.records import latest_records
from jobs.status import status_report
from tests.launch_helpers import cancel_on_failure, job_ids, only_run, run_cli, wait_jobs_ended, wait_settled

pytest_plugins = ["tests.slurm_cluster"]
pytestmark = pytest.mark.slurm

STAGES = ["preprocess", "teacher"]


def test_memory_kill_is_reported_with_plan_and_resume_raises_the_request(slurm_cluster, ci_cache, tmp_path, capsys):
    if slurm_cluster.mem_mode != "cgroup":
        pytest.skip("without cgroup memory enforcement SLURM does not kill by --mem reliably")
    run_cli("submit", "--profile", "ci", "--runs-root", str(tmp_path / "runs"), "-O", f"data.cache_dir={ci_cache}",
            "-O", "stages=[preprocess,teacher]", "-O", "resources.teacher.mem_gb=0.5", "-O", "model.hidden=32",
            "-O", "model.heads=8", "-O", "train.batch_size=480", "-O", "train.epochs=1")
    run = only_run(tmp_path / "runs")
    first = job_ids(run)
    with cancel_on_failure(slurm_cluster, lambda: [run]):
        states = wait_settled(run, STAGES, timeout=240)
        assert states == {"preprocess": "done", "teacher": "out_of_memory"}, status_report(run.path)
        capsys.readouterr()
        run_cli("status", "--run", str(run.path))
        out = capsys.readouterr().out
        assert "stage teacher out of memory: requested 0.5G (--mem) was not enough; planned " in out
        assert "within 0.50G of cpu memory (teacher/memory_plan.json)" in out
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
