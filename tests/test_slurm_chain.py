"""`make submit PROFILE=ci` on the real local cluster: the whole CAN chain through sbatch with afterok
dependencies, every stage done in `make status`, and the same results as a local-executor run of
the same profile (same seeds, one torch thread each)."""
from __future__ import annotations

import json

import pytest

from tests.launch_helpers import (
    CHAIN,
    cancel_on_failure,
    job_ids,
    only_run,
    results,
    run_cli,
    stage_states,
    wait_jobs_ended,
    wait_settled,
)

pytest_plugins = ["tests.slurm_cluster"]
pytestmark = pytest.mark.slurm


def _epochs(run) -> list[dict]:
    lines = (run.path / "teacher" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_submitted_chain_matches_the_local_executor(slurm_cluster, ci_cache, tmp_path, capsys):
    cache = ["-O", f"data.cache_dir={ci_cache}"]
    run_cli("submit", "--profile", "ci", "--runs-root", str(tmp_path / "slurm"), *cache)
    run = only_run(tmp_path / "slurm")
    ids = job_ids(run)
    with cancel_on_failure(slurm_cluster, lambda: [run]):
        scripts = {s: (run.path / "logs" / j / f"{j}_submission.sh").read_text() for s, j in ids.items()}
        assert "--dependency" not in scripts["preprocess"]
        assert f"#SBATCH --dependency=afterok:{ids['preprocess']}\n" in scripts["teacher"]
        assert f"#SBATCH --dependency=afterok:{ids['preprocess']}:{ids['teacher']}\n" in scripts["evaluate"]
        assert all("#SBATCH --kill-on-invalid-dep=yes" in scripts[s] for s in ("teacher", "evaluate"))

        # The reference run goes through submitit's local executor while SLURM works on the chain.
        run_cli("dry-run", "--profile", "ci", "--runs-root", str(tmp_path / "local"), *cache)
        local = only_run(tmp_path / "local")

        assert wait_settled(run, CHAIN, timeout=300) == dict.fromkeys(CHAIN, "done")
        capsys.readouterr()
        run_cli("status", "--run", str(run.path))
        out = capsys.readouterr().out
        assert "executor slurm" in out and "stage " not in out.split("\n", 2)[2]  # no failure notes
        assert stage_states(run) == dict.fromkeys(CHAIN, "done")
        assert set(wait_jobs_ended(slurm_cluster, [run]).values()) == {"COMPLETED"}

        assert run.profile().train.seed == local.profile().train.seed
        for ours, theirs in zip(_epochs(run), _epochs(local), strict=True):
            assert ours["epoch"] == theirs["epoch"]
            assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5, abs=1e-7)
            assert ours["val"] == pytest.approx(theirs["val"], rel=1e-5, abs=1e-7)
        on_slurm, on_local = results(run), results(local)
        assert [(r["model"], r["split"]) for r in on_slurm] == [(r["model"], r["split"]) for r in on_local]
        for ours, theirs in zip(on_slurm, on_local):
            assert ours.pop("confusion") == theirs.pop("confusion"), ours["split"]
            assert ours == pytest.approx(theirs, abs=1e-6), ours["split"]
