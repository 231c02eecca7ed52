"""A sweep on the real local cluster: two profiles x two seeds become one job array per stage (two
sbatch calls for eight jobs), task i of the teacher array waits for task i of the preprocess array
(aftercorr), and every run ends done with its own seed. (An array waiting on two arrays, and runs
whose resources differ, are pinned by the sbatch scripts in tests/test_jobs.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from jobs.__main__ import main
from jobs.sweep import sweep_runs
from tests.launch_helpers import cancel_on_failure, job_ids, stage_states, wait_jobs_ended, wait_settled

pytest_plugins = ["tests.slurm_cluster"]
pytestmark = pytest.mark.slurm

CHAIN = ["preprocess", "teacher"]


def test_sweep_over_profiles_and_seeds_runs_as_job_arrays(slurm_cluster, ci_cache, tmp_path, capsys):
    wide = yaml.safe_load(Path("profiles/ci.yaml").read_text())
    wide["model"]["hidden"] = 16  # another model, the same resources: it shares the arrays
    (tmp_path / "ci_wide.yaml").write_text(yaml.safe_dump(wide))
    runs_root = tmp_path / "runs"
    assert main(["submit", "--profile", f"ci,{tmp_path / 'ci_wide.yaml'}", "--seeds", "2",
                 "--runs-root", str(runs_root), "-O", f"data.cache_dir={ci_cache}", "-O", "stages=[preprocess,teacher]"]) == 0
    out = capsys.readouterr().out
    (sweep,) = (runs_root / "_sweeps").iterdir()
    runs = sweep_runs(sweep)
    with cancel_on_failure(slurm_cluster, lambda: runs):
        assert [(r.path.parent.name, r.path.name.rsplit("-", 1)[1]) for r in runs] == [
            ("ci", "seed0"), ("ci", "seed1"), ("ci_wide", "seed0"), ("ci_wide", "seed1")]
        submissions = json.loads((sweep / "sweep.json").read_text())["submissions"]
        assert [(s["stage"], s["size"]) for s in submissions] == [(stage, 4) for stage in CHAIN]
        arrays = {s["stage"]: s["job_id"] for s in submissions}
        assert f"sweep of 4 runs in 2 submissions: preprocess {arrays['preprocess']}[4], teacher " in out
        for i, run in enumerate(runs):
            assert job_ids(run) == {stage: f"{arrays[stage]}_{i}" for stage in CHAIN}
        scripts = {s: (sweep / "logs" / a / f"{a}_submission.sh").read_text() for s, a in arrays.items()}
        assert all("#SBATCH --array=0-3%4\n" in text for text in scripts.values())
        assert "--dependency" not in scripts["preprocess"]
        assert f"#SBATCH --dependency=aftercorr:{arrays['preprocess']}\n" in scripts["teacher"]

        for run in runs:
            assert wait_settled(run, CHAIN, timeout=420) == dict.fromkeys(CHAIN, "done")
        assert set(wait_jobs_ended(slurm_cluster, runs).values()) == {"COMPLETED"}

    assert [r.profile().train.seed for r in runs] == [0, 1, 0, 1]
    assert [r.profile().model.hidden for r in runs] == [8, 8, 16, 16]
    seed0, seed1 = (torch.load(r.path / "teacher" / "best.pt", weights_only=True)["state_dict"] for r in runs[:2])
    assert any(not torch.equal(seed0[k], seed1[k]) for k in seed0)  # each run trained with its own seed
    for run in runs:
        teacher = json.loads((run.path / "teacher" / "done.json").read_text())
        assert teacher["epochs_run"] == run.profile().train.epochs
        assert (run.path / "teacher" / "best.pt").exists()
    capsys.readouterr()
    assert main(["status", "--run", str(sweep)]) == 0
    report = capsys.readouterr().out
    assert report.startswith(f"sweep {sweep}: 4 runs")
    assert all(stage_states(run) == dict.fromkeys(CHAIN, "done") for run in runs)
