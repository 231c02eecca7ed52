"""The launch layer: resources -> parameters, sbatch text, sacct parsing, status states, resume
selection, sweeps, and submit/resume against stand-in SLURM commands (what the scripts say and what
is recorded). Behaviour on the real local cluster is in tests/test_slurm_*.py."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import yaml
from submitit.slurm.slurm import SlurmExecutor

from jobs import slurm
from jobs.__main__ import main
from jobs.errors import LaunchError
from jobs.launch import failure_summary
from jobs.records import latest_records
from jobs.resources import executor_parameters
from jobs.selection import chain_dependencies, done_states, plan_resume
from jobs.slurm import SacctJob, array_base, expand_array_record, parse_elapsed, parse_rss_mb, parse_sacct
from jobs.stage_job import StageJob, limit_threads
from jobs.status import current_status, memory_plan_summary, resolve_state, stage_rows
from jobs.submit import SlurmLauncher
from jobs.sweep import group_submissions, sweep_profiles, sweep_runs
from pipeline.config import load_profile
from pipeline.runner import fingerprint_for
from pipeline.runs import RunDir
from tests.launch_helpers import table_lines

CHAIN = ["preprocess", "teacher", "evaluate"]


# -- resources -> executor parameters ----------------------------------------------------------

def test_parameters_from_profile_resources():
    profile = load_profile("local")
    assert executor_parameters(profile, "preprocess") == {
        "name": "local-preprocess", "timeout_min": 60, "mem_gb": 4.0, "cpus_per_task": 2,
    }


def test_parameters_carry_site_options_and_dependencies():
    profile = load_profile("local", [
        "resources.teacher.partition=gpu", "resources.teacher.account=proj1", "resources.teacher.qos=high",
        "resources.teacher.gpus=1", "resources.teacher.extra={constraint: a100, mail_type: FAIL}",
    ])
    params = executor_parameters(profile, "teacher", ["101", "102"])
    assert params["gpus_per_node"] == 1
    assert (params["slurm_partition"], params["slurm_account"], params["slurm_qos"]) == ("gpu", "proj1", "high")
    assert params["slurm_additional_parameters"] == {
        "constraint": "a100", "mail-type": "FAIL",
        "dependency": "afterok:101:102", "kill-on-invalid-dep": "yes",
    }


def test_extra_may_not_shadow_a_resources_field():
    profile = load_profile("local", ["resources.teacher.extra={mem: 64G}"])
    with pytest.raises(LaunchError, match=r"resources\.teacher\.extra\.mem.*resources\.teacher\.mem_gb"):
        executor_parameters(profile, "teacher")


def test_missing_time_limit_is_an_error_not_five_minutes():
    profile = load_profile("local", ["resources.default.time_min=null", "resources.preprocess.time_min=null"])
    with pytest.raises(LaunchError, match=r"resources\.preprocess\.time_min"):
        executor_parameters(profile, "preprocess")


GOLDEN_SBATCH = """\
#!/bin/bash

# Parameters
#SBATCH --account=proj1
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=2
#SBATCH --dependency=afterok:101:102
#SBATCH --error=/runs/local/r1/logs/%j/%j_0_log.err
#SBATCH --gpus-per-node=1
#SBATCH --job-name=local-teacher
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --mem=12800MB
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=/runs/local/r1/logs/%j/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --signal=USR2@90
#SBATCH --time=240
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /runs/local/r1/logs/%j/%j_%t_log.out --error /runs/local/r1/logs/%j/%j_%t_log.err \
python -u -m submitit.core._submit /runs/local/r1/logs/%j
"""


def test_rendered_sbatch_script_is_pinned(monkeypatch):
    # Rendering needs no cluster; submitit only refuses to build a SLURM executor without srun.
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    profile = load_profile("local", [
        "resources.teacher.partition=gpu", "resources.teacher.account=proj1", "resources.teacher.qos=high",
        "resources.teacher.gpus=1", "resources.teacher.mem_gb=12.5", "resources.teacher.extra={constraint: a100}",
        "resources.teacher.cpus=2", "resources.teacher.time_min=240",
    ])
    executor = SlurmLauncher()._executor(Path("/runs/local/r1"), executor_parameters(profile, "teacher", ["101", "102"]))
    text = executor._executor._make_submission_file_text("python -u -m submitit.core._submit /runs/local/r1/logs/%j", "u")
    assert text == GOLDEN_SBATCH.replace("\\\n", "")


# -- sacct parsing -----------------------------------------------------------------------------

SACCT_SAMPLE = """\
8|FAILED|00:00:01|
8.batch|FAILED|00:00:01|0
8.0|FAILED|00:00:01|55120K
9|CANCELLED by 0|00:00:00|
10|OUT_OF_MEMORY|00:00:12|
10.batch|OUT_OF_MEMORY|00:00:12|4194304K
10.extern|COMPLETED|00:00:12|0
11|RUNNING|1-02:03:04|
11.0|RUNNING|1-02:03:04|1.5G
12|PENDING|00:00:00|
13|REQUEUED|00:10:00|
13|COMPLETED|00:00:30|
23|FAILED|00:00:01|
23.batch|FAILED|00:00:01|3964K
23.0|OUT_OF_MEMORY|00:00:01|81380K
"""


def test_parse_sacct_folds_steps_into_jobs():
    jobs = parse_sacct(SACCT_SAMPLE)
    assert set(jobs) == {"8", "9", "10", "11", "12", "13", "23"}
    assert jobs["8"].state == "FAILED" and jobs["8"].max_rss_mb == pytest.approx(53.8, abs=0.1)
    assert jobs["9"].state == "CANCELLED" and jobs["9"].raw_state == "CANCELLED by 0"
    assert jobs["10"].state == "OUT_OF_MEMORY" and jobs["10"].max_rss_mb == 4096.0
    assert jobs["11"].elapsed_s == 86400 + 2 * 3600 + 3 * 60 + 4 and jobs["11"].max_rss_mb == 1536.0
    assert jobs["12"].max_rss_mb is None
    assert jobs["13"].state == "COMPLETED"  # the newest line of a requeued job wins
    # cgroup OOM kill as the local cluster reports it: only the srun step says OUT_OF_MEMORY
    assert jobs["23"].state == "OUT_OF_MEMORY" and "23.0" in jobs["23"].raw_state
    assert jobs["8"].state == "FAILED"


@pytest.mark.parametrize("text, seconds", [
    ("00:00:01", 1), ("01:02:03", 3723), ("2-00:00:00", 172800), ("05:30.500", 330.5), ("", None), ("INVALID", None),
])
def test_parse_elapsed(text, seconds):
    assert parse_elapsed(text) == seconds


@pytest.mark.parametrize("text, mb", [
    ("1024K", 1.0), ("2M", 2.0), ("1.5G", 1536.0), ("1048576", 1.0), ("0", 0.0), ("", None), ("n/a", None),
])
def test_parse_rss(text, mb):
    assert parse_rss_mb(text) == mb


# -- status states -----------------------------------------------------------------------------

def _job(state: str) -> SacctJob:
    return SacctJob("7", slurm.normalise_state(state), state, 1.0, None)


@pytest.mark.parametrize("done, status, job, submitted, alive, expected", [
    ("done", {}, None, True, None, "done"),
    ("done", {"state": "failed"}, _job("FAILED"), True, None, "done"),
    (None, {}, _job("PENDING"), True, None, "pending"),
    (None, {"state": "running"}, _job("RUNNING"), True, None, "running"),
    # killed by the scheduler: status.json still says running, sacct knows better
    (None, {"state": "running"}, _job("OUT_OF_MEMORY"), True, None, "out_of_memory"),
    (None, {}, _job("CANCELLED by 0"), True, None, "cancelled"),
    (None, {"state": "running"}, _job("TIMEOUT"), True, None, "interrupted"),
    (None, {"state": "running"}, _job("NODE_FAIL"), True, None, "interrupted"),
    (None, {"state": "failed", "error": "ValueError: x"}, _job("FAILED"), True, None, "failed"),
    ("stale", {"state": "done"}, _job("COMPLETED"), True, None, "stale"),
    ("stale", {}, _job("RUNNING"), True, None, "running"),
    # no sacct (local runs): the stage's own files
    (None, {"state": "running"}, None, True, None, "running"),
    (None, {"state": "running"}, None, True, False, "interrupted"),
    (None, {"state": "interrupted"}, None, True, None, "interrupted"),
    (None, {"state": "failed", "error": "boom"}, None, True, None, "failed"),
    (None, {}, None, True, None, "pending"),
    (None, {}, None, False, None, "pending"),
])
def test_resolve_state(done, status, job, submitted, alive, expected):
    state, _ = resolve_state("teacher", done, status, job, submitted, alive)
    assert state == expected


def test_oom_detail_names_the_setting_to_raise():
    _, detail = resolve_state("teacher", None, {}, _job("OUT_OF_MEMORY"), True)
    assert "resources.teacher.mem_gb" in detail


def _mark_done(run: RunDir, stage: str, result_key: str | None = None) -> None:
    profile = run.profile()
    run.mark_done(stage, fingerprint_for(run, profile, stage), {"result_key": result_key or f"{stage}-key"})


def test_stage_rows_combine_markers_status_and_sacct(tmp_path):
    run = RunDir.create(load_profile("local"), root=tmp_path, run_id="r")
    _mark_done(run, "preprocess")
    run.write_status("teacher", state="running", started=100.0, ended=None, pid=1, error=None)
    records = {s: {"job_id": str(i), "stderr": f"/logs/{i}.err"} for i, s in enumerate(CHAIN, start=1)}
    sacct = parse_sacct("1|COMPLETED|00:01:00|\n2|OUT_OF_MEMORY|00:00:30|\n2.batch|OUT_OF_MEMORY|00:00:30|4G\n"
                        "3|CANCELLED by 0|00:00:00|\n")
    rows = stage_rows(run, CHAIN, done_states(run, run.profile()), records, sacct, now=200.0)
    assert [r.state for r in rows] == ["done", "out_of_memory", "cancelled"]
    assert rows[1].peak_mb == 4096.0 and rows[1].elapsed_s == 30.0
    assert rows[1].log == "/logs/2.err"  # killed: only SLURM's stderr says why
    assert "upstream teacher" in rows[2].detail
    assert rows[2].log == "/logs/3.err"  # never started: the job's own stderr


def test_oom_row_says_what_it_had_and_how_to_give_more(tmp_path):
    run = RunDir.create(load_profile("local"), root=tmp_path, run_id="r")
    records = {"preprocess": {"job_id": "1", "resources": {"mem_gb": 4.0}}}
    (row,) = stage_rows(run, ["preprocess"], {}, records, parse_sacct("1|OUT_OF_MEMORY|00:00:05|\n"))
    assert row.state == "out_of_memory"
    assert row.detail == (f"requested 4G (--mem) was not enough; "
                          f"make resume RUN={run.path} O=resources.preprocess.mem_gb=8")


def test_oom_row_compares_the_request_with_the_memory_plan(tmp_path):
    run = RunDir.create(load_profile("local"), root=tmp_path, run_id="r")
    plan = {"budget": {"device": "cpu", "total": 512 * 2**20, "fixed": {"allocator fragmentation buffer": 51 * 2**20},
                       "static": {"parameters": 2**20, "gradients": 2**20, "optimizer state": 2 * 2**20,
                                  "of which embedding tables": 2**19}},
            "plan": {"graphs": 104, "predicted_bytes": 396 * 2**20}}
    (run.stage_dir("teacher") / "memory_plan.json").write_text(json.dumps(plan))
    assert memory_plan_summary(run, "teacher") == (
        "planned 0.39G (104 graphs per batch) plus 51M reserved, within 0.50G of cpu memory "
        "(teacher/memory_plan.json)")
    records = {"teacher": {"job_id": "5", "resources": {"mem_gb": 0.5}}}
    (row,) = stage_rows(run, ["teacher"], {}, records, parse_sacct("5|OUT_OF_MEMORY|00:00:05|\n"))
    assert row.detail.startswith("requested 0.5G (--mem) was not enough; planned 0.39G")
    assert row.detail.endswith(f"make resume RUN={run.path} O=resources.teacher.mem_gb=1")


def test_status_file_of_an_older_job_is_not_the_current_jobs():
    assert current_status({"state": "running", "job_id": "7"}, "9") == {}
    assert current_status({"state": "running", "job_id": "9"}, "9")["state"] == "running"
    assert current_status({"state": "running"}, "9")["state"] == "running"  # local runs have no job id
    assert current_status({"state": "failed", "job_id": "12_3"}, "12_3")["state"] == "failed"


def test_status_names_the_failed_stage_its_log_and_the_way_on(tmp_path, capsys):
    run = RunDir.create(load_profile("local"), root=tmp_path, run_id="r")
    _mark_done(run, "preprocess")
    run.write_status("teacher", state="failed", started=1.0, ended=2.0, error="ValueError: bad split")
    (run.path / "teacher" / "log").write_text("Traceback ...\n")
    assert main(["status", "--run", str(run.path)]) == 0
    out = capsys.readouterr().out
    notes = out.split("\n\n", 1)[1].splitlines()
    assert notes == [f"stage teacher failed: ValueError: bad split", f"  log: {run.path / 'teacher' / 'log'}",
                     f"after fixing it: make resume RUN={run.path} (relaunches only what is not done)"]


def test_done_marker_with_other_inputs_is_stale_and_resources_are_not_inputs(tmp_path):
    run = RunDir.create(load_profile("local"), root=tmp_path, run_id="r")
    for stage in CHAIN:
        _mark_done(run, stage)
    assert done_states(run, run.profile()) == dict.fromkeys(CHAIN, "done")
    assert done_states(run, run.profile(["resources.teacher.mem_gb=64"])) == dict.fromkeys(CHAIN, "done")
    # train.* is read by the training stages (and what reads them), not by preprocess
    assert done_states(run, run.profile(["train.epochs=3"])) == {"preprocess": "done", "teacher": "stale",
                                                                 "evaluate": "stale"}
    run.clear_done("teacher")
    assert done_states(run, run.profile()) == {"preprocess": "done", "teacher": None, "evaluate": "stale"}


# -- resume selection --------------------------------------------------------------------------

NEEDS = chain_dependencies("can", CHAIN)


@pytest.mark.parametrize("done, queued, launch, keep", [
    (set(), set(), CHAIN, []),
    ({"preprocess"}, set(), ["teacher", "evaluate"], []),
    ({"preprocess", "teacher"}, set(), ["evaluate"], []),
    (set(CHAIN), set(), [], []),
    # evaluate's done marker never survives a missing teacher (done_states), but even so:
    ({"preprocess", "evaluate"}, set(), ["teacher", "evaluate"], []),
    ({"preprocess"}, {"teacher", "evaluate"}, [], ["teacher", "evaluate"]),
    ({"preprocess"}, {"evaluate"}, ["teacher", "evaluate"], []),  # its queued job waits on a dead one
    (set(), {"preprocess"}, ["teacher", "evaluate"], ["preprocess"]),
])
def test_plan_resume(done, queued, launch, keep):
    assert plan_resume(CHAIN, NEEDS, done, queued) == (launch, keep)


# -- the job callable --------------------------------------------------------------------------

def test_stage_job_checkpoint_resubmits_the_same_call():
    job = StageJob(cpus=3)
    delayed = job.checkpoint("/runs/p/r", "teacher", ())
    again = pickle.loads(pickle.dumps(delayed))
    assert isinstance(again.function, StageJob) and again.function.cpus == 3
    assert again.args == ("/runs/p/r", "teacher", ()) and again.kwargs == {}


def test_stage_job_checkpoint_names_the_epoch_checkpoint_it_resumes_from(monkeypatch, caplog):
    monkeypatch.setattr("jobs.stage_job.active_checkpoint",
                        lambda run_dir, stage: Path("/runs/p/r/teacher/checkpoint.pt"))
    with caplog.at_level("WARNING", logger="pipeline.ckpt-test"):
        StageJob().checkpoint("/runs/p/r", "ckpt-test", ())
    assert "resumes from /runs/p/r/teacher/checkpoint.pt" in caplog.text


def test_failure_summary_is_the_exception_line_of_the_job_traceback():
    text = ("Job (task=0) failed during processing with trace:\n----------------------\n"
            "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
            "ValueError: data.window too large\n----------------------\nYou can check full logs with ...")
    assert failure_summary(text) == "ValueError: data.window too large"
    assert failure_summary("sbatch: error: invalid partition specified: nope\nmore") == (
        "sbatch: error: invalid partition specified: nope")


def test_stage_job_runs_the_runner_with_threads_sized(monkeypatch):
    calls = []
    monkeypatch.setattr("jobs.stage_job.run_stage", lambda *a: calls.append(a) or {"ok": True})
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(var, raising=False)
    assert StageJob(cpus=3)("/runs/p/r", "teacher", []) == {"ok": True}
    assert calls == [("/runs/p/r", "teacher", ())]
    assert os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "5")
    monkeypatch.delenv("MKL_NUM_THREADS")
    limit_threads(3)
    assert os.environ["MKL_NUM_THREADS"] == "5" and os.environ["OMP_NUM_THREADS"] == "3"


# -- submit / resume against stand-in SLURM commands ---------------------------------------------

class FakeSlurm:
    """sbatch/srun/scancel/sacct scripts on PATH that record what they were asked."""

    def __init__(self, root: Path):
        self.state = root / "slurm"
        self.bin = root / "bin"
        self.state.mkdir()
        self.bin.mkdir()
        s = self.state
        self._script("sbatch", f"""n=$(( $(cat {s}/counter 2>/dev/null || echo 100) + 1 )); echo $n > {s}/counter
if [ "$n" = "$(cat {s}/refuse_at 2>/dev/null)" ]; then echo "sbatch: error: invalid partition specified: nope" >&2; exit 1; fi
cp "$1" {s}/$n.sh; echo "Submitted batch job $n\"""")
        self._script("srun", "exit 0")
        self._script("scancel", f'echo "$@" >> {s}/scancel')
        self._script("sacct", f"cat {s}/sacct 2>/dev/null; true")

    def _script(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)

    def script(self, job_id: str) -> str:
        return (self.state / f"{job_id}.sh").read_text()

    def set_sacct(self, text: str) -> None:
        (self.state / "sacct").write_text(text)

    def refuse_at(self, job_id: int) -> None:
        (self.state / "refuse_at").write_text(str(job_id))

    @property
    def cancelled(self) -> list[str]:
        path = self.state / "scancel"
        return path.read_text().split() if path.exists() else []


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    fake = FakeSlurm(tmp_path)
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ['PATH']}")
    return fake


def _only_run(root: Path) -> RunDir:
    (path,) = (root / "local").iterdir()
    return RunDir(path)


def test_submit_without_sbatch_fails_cleanly_and_writes_nothing(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    runs = tmp_path / "runs"
    assert main(["submit", "--profile", "local", "--runs-root", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "sbatch" in err and "make dry-run PROFILE=local" in err
    assert not runs.exists()


def test_submit_queues_the_chain_with_afterok(fake_slurm, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["submit", "--profile", "local", "--runs-root", str(runs), "-O", "train.epochs=2"]) == 0
    run = _only_run(runs)
    records = latest_records(run)
    assert {s: r["job_id"] for s, r in records.items()} == {"preprocess": "101", "teacher": "102", "evaluate": "103"}
    assert records["evaluate"]["depends_on"] == ["101", "102"]
    assert "#SBATCH --dependency" not in fake_slurm.script("101")
    assert "#SBATCH --dependency=afterok:101\n" in fake_slurm.script("102")
    assert "#SBATCH --dependency=afterok:101:102\n" in fake_slurm.script("103")
    assert "#SBATCH --kill-on-invalid-dep=yes" in fake_slurm.script("103")
    assert "#SBATCH --job-name=local-teacher" in fake_slurm.script("102")
    assert run.profile().train.epochs == 2
    assert run.read_jobs()["executor"] == "slurm"
    assert records["teacher"]["stderr"] == str(run.path / "logs" / "102" / "102_0_log.err")
    out = capsys.readouterr().out
    assert "102" in out and "101,102" in out


def test_submit_sweep_makes_one_array_per_stage(fake_slurm, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["submit", "--profile", "local", "--seeds", "3", "--runs-root", str(runs), "-O", "train.seed=7"]) == 0
    found = sorted((runs / "local").iterdir())
    assert [p.name.rsplit("-", 1)[1] for p in found] == ["seed7", "seed8", "seed9"]
    assert [RunDir(p).profile().train.seed for p in found] == [7, 8, 9]
    # three sbatch calls for nine jobs: task i of each array is run i
    ids = [{s: r["job_id"] for s, r in latest_records(RunDir(p)).items()} for p in found]
    assert ids == [{"preprocess": f"101_{i}", "teacher": f"102_{i}", "evaluate": f"103_{i}"} for i in range(3)]
    assert sorted(p.name for p in fake_slurm.state.glob("*.sh")) == ["101.sh", "102.sh", "103.sh"]
    assert "#SBATCH --array=0-2%3\n" in fake_slurm.script("101")
    assert "#SBATCH --dependency" not in fake_slurm.script("101")
    assert "#SBATCH --dependency=aftercorr:101\n" in fake_slurm.script("102")
    assert "#SBATCH --dependency=aftercorr:101:102\n" in fake_slurm.script("103")
    assert "#SBATCH --kill-on-invalid-dep=yes" in fake_slurm.script("103")
    assert "#SBATCH --job-name=local-teacher" in fake_slurm.script("102")
    teacher = latest_records(RunDir(found[2]))["teacher"]
    assert teacher["depends_on"] == ["101_2"] and teacher["array"] == {"id": "102", "index": 2, "size": 3}
    (sweep,) = (runs / "_sweeps").iterdir()
    assert teacher["stderr"] == str(sweep / "logs" / "102_2" / "102_2_0_log.err")
    assert [r.path for r in sweep_runs(sweep)] == found
    assert "sweep of 3 runs in 3 submissions: preprocess 101[3], teacher 102[3], evaluate 103[3]" in capsys.readouterr().out


def test_sweep_over_profiles_shares_arrays_only_where_resources_match(fake_slurm, tmp_path):
    runs = tmp_path / "runs"
    wide = yaml.safe_load(Path("profiles/ci.yaml").read_text())
    wide["resources"]["teacher"]["mem_gb"] = 8
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(wide))
    assert main(["submit", "--profile", f"ci,{tmp_path / 'wide.yaml'}", "--runs-root", str(runs)]) == 0
    (ci,) = (runs / "ci").iterdir()
    (other,) = (runs / "wide").iterdir()
    ids = [{s: r["job_id"] for s, r in latest_records(RunDir(p)).items()} for p in (ci, other)]
    # preprocess: one array; teacher: 8G vs 2G, so one job each; evaluate: equal resources, but its
    # runs wait on two single teacher jobs, which aftercorr cannot express: one job each
    assert ids == [{"preprocess": "101_0", "teacher": "102", "evaluate": "104"},
                   {"preprocess": "101_1", "teacher": "103", "evaluate": "105"}]
    assert "#SBATCH --job-name=sweep-preprocess" in fake_slurm.script("101")
    assert "#SBATCH --dependency=afterok:101_1\n" in fake_slurm.script("103")
    assert "#SBATCH --mem=8GB" in fake_slurm.script("103")
    assert "#SBATCH --dependency=afterok:101_1:103\n" in fake_slurm.script("105")
    assert "--array" not in fake_slurm.script("105")


@pytest.mark.parametrize("members, keys, upstream, expected", [
    # no upstream: equal keys share an array
    ([0, 1, 2], {0: "a", 1: "a", 2: "a"}, {0: {}, 1: {}, 2: {}}, [((0, 1, 2), (), True)]),
    # aligned upstream arrays: aftercorr on both
    ([0, 1], {0: "a", 1: "a"}, {0: {"p": "7_0", "t": "8_0"}, 1: {"p": "7_1", "t": "8_1"}},
     [((0, 1), ("7", "8"), True)]),
    # task indexes do not line up (the group is a subset of the upstream array): single jobs
    ([1, 2], {1: "a", 2: "a"}, {1: {"p": "7_1"}, 2: {"p": "7_2"}}, [((1,), ("7_1",), False), ((2,), ("7_2",), False)]),
    # different keys: separate groups, order kept
    ([0, 1, 2], {0: "a", 1: "b", 2: "a"}, {0: {}, 1: {}, 2: {}}, [((0, 2), (), True), ((1,), (), False)]),
    # a plain upstream job (resume waiting on a queued one): single jobs
    ([0, 1], {0: "a", 1: "a"}, {0: {"p": "7"}, 1: {"p": "7_1"}}, [((0,), ("7",), False), ((1,), ("7_1",), False)]),
])
def test_group_submissions(members, keys, upstream, expected):
    subs = group_submissions("teacher", members, keys, upstream)
    assert [(s.members, s.depends_on, s.array) for s in subs] == expected


def test_array_records_of_sacct_expand_to_tasks():
    jobs = parse_sacct("40_0|COMPLETED|00:00:05|\n40_0.batch|COMPLETED|00:00:05|200M\n"
                       "40_[1-2,4%3]|PENDING|00:00:00|\n41_3|OUT_OF_MEMORY|00:00:01|\n")
    assert {k: v.state for k, v in jobs.items()} == {
        "40_0": "COMPLETED", "40_1": "PENDING", "40_2": "PENDING", "40_4": "PENDING", "41_3": "OUT_OF_MEMORY"}
    assert jobs["40_0"].max_rss_mb == 200.0
    assert expand_array_record("12") == ["12"] and array_base("12_3") == "12"


def test_profile_list_and_seeds_validation():
    with pytest.raises(LaunchError, match="listed twice"):
        sweep_profiles("local,local", [], 1)
    with pytest.raises(LaunchError, match="at least 1"):
        sweep_profiles("local", [], 0)
    assert [(p.name, suffix) for p, suffix in sweep_profiles("local, ci", [], 2)] == [
        ("local", "-seed0"), ("local", "-seed1"), ("ci", "-seed0"), ("ci", "-seed1")]


def test_submit_refused_midway_cancels_what_it_queued(fake_slurm, tmp_path, capsys):
    fake_slurm.refuse_at(102)
    runs = tmp_path / "runs"
    assert main(["submit", "--profile", "local", "--runs-root", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "stage teacher" in err and "invalid partition" in err and "make resume RUN=" in err
    assert fake_slurm.cancelled == ["101"]
    assert list(latest_records(_only_run(runs))) == ["preprocess"]


def test_resume_relaunches_only_what_is_not_done(fake_slurm, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["submit", "--profile", "local", "--runs-root", str(runs)]) == 0
    run = _only_run(runs)
    _mark_done(run, "preprocess")
    fake_slurm.set_sacct("101|COMPLETED|00:01:00|\n102|OUT_OF_MEMORY|00:00:10|\n103|CANCELLED by 0|00:00:00|\n")
    assert main(["resume", "--run", str(run.path), "-O", "resources.teacher.mem_gb=64"]) == 0
    jobs = run.read_jobs()
    assert [r["job_id"] for r in jobs["history"]] == ["101", "102", "103", "104", "105"]
    assert {s: r["job_id"] for s, r in jobs["stages"].items()} == {"preprocess": "101", "teacher": "104", "evaluate": "105"}
    assert jobs["stages"]["teacher"]["depends_on"] == [] and jobs["stages"]["evaluate"]["depends_on"] == ["104"]
    assert "#SBATCH --mem=64GB" in fake_slurm.script("104")
    assert run.profile().resources_for("teacher").mem_gb == 64  # re-frozen
    assert done_states(run, run.profile())["preprocess"] == "done"  # resources are not an input


def test_resume_keeps_jobs_still_in_the_queue(fake_slurm, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["submit", "--profile", "local", "--runs-root", str(runs)]) == 0
    run = _only_run(runs)
    _mark_done(run, "preprocess")
    fake_slurm.set_sacct("101|COMPLETED|00:01:00|\n102|RUNNING|00:00:10|\n103|PENDING|00:00:00|\n")
    assert main(["resume", "--run", str(run.path)]) == 0
    assert "still queued" in capsys.readouterr().out
    assert len(run.read_jobs()["history"]) == 3
    assert fake_slurm.cancelled == []


def test_status_reports_scheduler_kills(fake_slurm, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["submit", "--profile", "local", "--runs-root", str(runs)]) == 0
    run = _only_run(runs)
    run.write_status("preprocess", state="running", started=1.0, ended=None, pid=1, error=None)
    fake_slurm.set_sacct("101|OUT_OF_MEMORY|00:00:10|\n101.batch|OUT_OF_MEMORY|00:00:10|4000M\n"
                         "102|CANCELLED by 0|00:00:00|\n103|CANCELLED by 0|00:00:00|\n")
    capsys.readouterr()
    assert main(["status", "--run", str(run.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_stage = {line.split()[0]: line.split()[1] for line in table_lines(lines)}
    assert by_stage == {"preprocess": "out_of_memory", "teacher": "cancelled", "evaluate": "cancelled"}


def test_resume_of_a_sweep_relaunches_what_failed_as_arrays_again(fake_slurm, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["submit", "--profile", "local", "--seeds", "3", "--runs-root", str(runs)]) == 0
    (sweep,) = (runs / "_sweeps").iterdir()
    found = sweep_runs(sweep)
    for run in found:
        _mark_done(run, "preprocess")
    _mark_done(found[1], "teacher")
    fake_slurm.set_sacct("101_[0-2]|COMPLETED|00:01:00|\n102_0|FAILED|00:00:10|\n102_1|COMPLETED|00:00:10|\n"
                         "102_2|FAILED|00:00:10|\n103_[0-2]|CANCELLED by 0|00:00:00|\n")
    capsys.readouterr()
    assert main(["status", "--run", str(sweep)]) == 0
    assert capsys.readouterr().out.startswith(f"sweep {sweep}: 3 runs")
    assert main(["resume", "--run", str(sweep)]) == 0
    # runs 0 and 2 relaunch teacher and evaluate: a 2-task array each, evaluate after its own teacher task
    ids = [{s: r["job_id"] for s, r in latest_records(run).items()} for run in found]
    assert [i["teacher"] for i in ids] == ["104_0", "102_1", "104_1"]
    assert [i["evaluate"] for i in ids] == ["105_0", "106", "105_1"]
    assert "#SBATCH --dependency=aftercorr:104\n" in fake_slurm.script("105")
    assert "#SBATCH --dependency" not in fake_slurm.script("104")
    assert "#SBATCH --dependency=afterok:102_1\n" not in fake_slurm.script("106")  # its teacher is done
    assert "--array" not in fake_slurm.script("106")


def test_status_and_resume_name_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["status", "--run", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["resume", "--run", str(tmp_path)]) == 2
