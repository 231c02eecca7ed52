"""A stage's fingerprint hashes the profile sections it reads and its upstream results, nothing else:
an override reruns the stages that read it and their dependants, never the stages before them."""
from __future__ import annotations

from pathlib import Path

import pytest

from jobs.__main__ import main
from jobs.selection import done_states
from pipeline.config import ProfileError, load_profile
from pipeline.runs import RunDir, stage_fingerprint
from pipeline.stages import WORKLOADS
from tests.launch_helpers import table_lines

CAN_CHAIN = ["preprocess", "autoencoder", "teacher", "student", "curriculum", "fusion", "evaluate", "export"]
TINY_CAN = ["model.hidden=8", "model.heads=2", "model.layers=2", "model.id_embed_dim=8", "model.mlp_hidden=16",
            "vgae.hidden=8", "vgae.heads=2", "vgae.latent_dim=8", "vgae.id_embed_dim=8",
            "train.epochs=1", "train.batch_size=32", "train.threads=1", "distill.train_baseline=false"]


def _changed(task_profile: str, overrides: list[str], base: list[str] | None = None) -> set[str]:
    """Stages whose own fingerprint (no upstream) changes under ``overrides``."""
    before = load_profile(task_profile, base or [], check_paths=False)
    after = load_profile(task_profile, [*(base or []), *overrides], check_paths=False)
    stages = WORKLOADS[before.task].stage_names()
    return {s for s in stages if stage_fingerprint(before, s, {}) != stage_fingerprint(after, s, {})}


@pytest.mark.parametrize("override,readers", [
    ("student_model.hidden=4", {"student", "curriculum"}),
    ("vgae_student.latent_dim=4", {"student"}),
    ("distill.alpha=0.5", {"student", "curriculum"}),
    ("curriculum.pacing=linear", {"curriculum"}),
    ("fusion.method=isotonic", {"fusion"}),
    ("vgae.latent_dim=8", {"autoencoder"}),
    ("model.hidden=24", {"teacher"}),
    ("data.window=50", {"preprocess"}),
    ("train.epochs=7", {"autoencoder", "teacher", "student", "curriculum", "fusion", "evaluate", "export"}),
    ("resources.teacher.mem_gb=64", set()),
    ("data.cache_dir=/elsewhere", set()),
    ("executor=slurm", set()),
])
def test_a_can_override_changes_the_stages_that_read_it_only(override, readers):
    assert _changed("local", [override]) == readers


@pytest.mark.parametrize("override,readers", [
    ("kg_model.student.hidden=32", {"student"}),
    ("kg_model.teacher.hidden=128", {"teacher"}),
    ("kg.fanouts=[4, 2]", {"preprocess", "teacher", "student", "export"}),
    ("distill.alpha=0.5", {"student"}),
    ("resources.student.mem_gb=64", set()),
])
def test_a_kg_override_changes_the_stages_that_read_it_only(override, readers):
    assert _changed("primekg", [override]) == readers


def test_a_section_of_the_other_workload_is_not_a_key_of_the_profile():
    with pytest.raises(ProfileError, match=r"-O kg.fanouts=\[3\]: kg: unknown key 'kg'"):
        load_profile("local", ["kg.fanouts=[3]"])
    with pytest.raises(ProfileError, match=r"-O student_model.hidden=4: student_model: unknown key"):
        load_profile("primekg", ["student_model.hidden=4"])


def _status_states(run: RunDir, capsys) -> dict[str, str]:
    capsys.readouterr()
    assert main(["status", "--run", str(run.path)]) == 0
    return {line.split()[0]: line.split()[1] for line in table_lines(capsys.readouterr().out.splitlines())}


def test_resume_after_a_student_override_reruns_only_what_reads_the_student(tmp_path, capsys):
    runs = tmp_path / "runs"
    overrides = [f"data.cache_dir={tmp_path / 'cache'}", f"stages=[{', '.join(CAN_CHAIN)}]", *TINY_CAN]
    assert main(["dry-run", "--profile", "local", "--runs-root", str(runs),
                 *[arg for o in overrides for arg in ("-O", o)]]) == 0
    (path,) = (runs / "local").iterdir()
    run = RunDir(path)
    assert done_states(run, run.profile()) == dict.fromkeys(CAN_CHAIN, "done")
    started = {stage: run.read_status(stage)["started"] for stage in CAN_CHAIN}

    assert main(["resume", "--run", str(run.path), "-O", "student_model.hidden=4"]) == 0
    resumed = [r["stage"] for r in run.read_jobs()["history"] if r["action"] == "resume"]
    assert resumed == ["student", "curriculum", "fusion", "export", "evaluate"]
    for stage in ("preprocess", "autoencoder", "teacher"):
        assert run.read_status(stage)["started"] == started[stage]   # never rerun
    for stage in resumed:
        assert run.read_status(stage)["started"] > started[stage]
    assert run.profile().student_model.hidden == 4                  # the override is frozen into the run
    assert _status_states(run, capsys) == dict.fromkeys(CAN_CHAIN, "done")


def test_resume_with_a_key_of_the_other_workload_is_one_error_and_reruns_nothing(tmp_path, capsys):
    profile = load_profile("local", [f"data.cache_dir={tmp_path / 'cache'}"])
    run = RunDir.create(profile, root=tmp_path / "runs", run_id="r")
    assert main(["resume", "--run", str(run.path), "-O", "kg.fanouts=[3]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "kg: unknown key 'kg'" in err[0]
    assert not (Path(run.path) / "jobs.json").exists()
