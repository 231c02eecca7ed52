"""Distillation: KD losses, the teacher-output cache and loader, offloading, and the student stage
(including a kill mid-epoch and a resume that recomputes neither the teacher cache nor the difficulty scores)."""
import json

import numpy as np
import pytest
import torch

from pipeline.can import distill
from pipeline.can.data.cache import GraphSplit
from pipeline.can.data.loader import GraphLoader
from pipeline.can.distill import (
    GAT_TEACHER,
    CachedTeacher,
    LiveTeacher,
    OutputCache,
    TeacherOutputLoader,
    kd_loss,
    kd_term,
    node_rows,
)
from pipeline.can.models.gat import GATWithJK
from pipeline.runner import run_stage
from pipeline.train import Trainer
from tests.helpers import EDGE_FEATURES, NODE_FEATURES, VOCAB, synthetic_split
from tests.kd_helpers import fresh_run


def _gat() -> GATWithJK:
    return GATWithJK(num_ids=len(VOCAB) + 1, node_features=len(NODE_FEATURES), edge_features=len(EDGE_FEATURES),
                     hidden=4, heads=2, layers=2, id_embed_dim=3, mlp_hidden=8)


# -- losses --------------------------------------------------------------------------------------

def test_kd_term_is_zero_for_equal_logits_and_scaled_by_t_squared():
    logits = torch.randn(5, 2)
    assert kd_term(logits, logits, 4.0).abs() < 1e-6
    s, t = torch.randn(5, 2, requires_grad=True), torch.randn(5, 2)
    kd_term(s, t, 2.0).backward()
    expected = (torch.softmax(s / 2, -1) - torch.softmax(t / 2, -1)) * 2 / 5   # d/ds of T^2 * KL / batch
    assert torch.allclose(s.grad, expected, atol=1e-6)


def test_alpha_mixes_soft_and_hard_terms():
    s, t, y = torch.randn(6, 2), torch.randn(6, 2), torch.randint(0, 2, (6,))
    hard = torch.nn.functional.cross_entropy(s, y)
    assert torch.allclose(kd_loss(s, t, y, temperature=3, alpha=0.0), hard)
    assert torch.allclose(kd_loss(s, None, y, temperature=3, alpha=0.5), hard)
    mixed = kd_loss(s, t, y, temperature=3, alpha=0.25)
    assert torch.allclose(mixed, 0.25 * kd_term(s, t, 3) + 0.75 * hard)
    # class weights weigh both terms: the soft one per graph by the weight of its label
    w = torch.tensor([1.0, 3.0])
    weighted = kd_loss(s, t, y, temperature=3, alpha=0.25, weight=w)
    expected = 0.25 * kd_term(s, t, 3, w[y]) + 0.75 * torch.nn.functional.cross_entropy(s, y, weight=w)
    assert torch.allclose(weighted, expected)
    per_graph = torch.stack([kd_term(s[i:i + 1], t[i:i + 1], 3) for i in range(6)])
    assert torch.allclose(kd_term(s, t, 3, w[y]), (per_graph * w[y]).sum() / w[y].sum())


# -- the teacher-output cache and loader ----------------------------------------------------------

def test_loader_attaches_cached_rows_of_each_batch(tmp_path):
    split = GraphSplit(synthetic_split(20, seed=1))
    graph_level = torch.arange(20, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
    node_level = split.t["x"].clone()
    inner = GraphLoader(split, 6, shuffle=True, seed=3, max_nodes=30)
    loader = TeacherOutputLoader(inner, {"logits": graph_level, "x": node_level}, {"logits": "graph", "x": "node"})
    loader.set_epoch(2)
    seen = []
    for batch, index in zip(loader, inner.batches()):
        assert torch.equal(batch.index, index)
        assert torch.equal(batch.teacher["logits"][:, 0].long(), index)
        assert torch.equal(batch.teacher["x"], batch.x)          # node rows in collate's order
        assert CachedTeacher()(batch) is batch.teacher
        seen.append(index)
    assert len(seen) == len(loader) and torch.cat(seen).sort().values.tolist() == list(range(20))
    # the wrapped loader keeps the budget and back-off
    loader.max_nodes = 12
    assert inner.max_nodes == 12 and loader.shrink(0.5) == inner.max_nodes
    assert node_rows(split.node_ptr.numpy(), np.array([], dtype=np.int64)).numel() == 0


def test_output_cache_is_keyed_by_the_checkpoint_and_computed_once(tmp_path):
    model_file = tmp_path / "best.pt"
    model_file.write_bytes(b"weights-1")
    calls = []

    def compute():
        calls.append(1)
        return {"logits": torch.ones(3, 2)}

    first = OutputCache(tmp_path / "cache", "teacher_outputs", model_file, "train")
    assert torch.equal(first.get_or_compute(compute)["logits"], torch.ones(3, 2)) and first.computed
    again = OutputCache(tmp_path / "cache", "teacher_outputs", model_file, "train")
    again.get_or_compute(compute)
    assert not again.computed and len(calls) == 1
    model_file.write_bytes(b"weights-2")          # new weights: new key, outputs recomputed
    other = OutputCache(tmp_path / "cache", "teacher_outputs", model_file, "train")
    assert other.path != first.path
    other.get_or_compute(compute)
    assert len(calls) == 2


def test_offloaded_teacher_holds_no_device_memory_bookkeeping():
    teacher = _gat()
    on_cpu = LiveTeacher(teacher, GAT_TEACHER, torch.device("cpu"), offload=True)
    assert on_cpu.mode == "resident" and on_cpu.resident() is teacher     # nothing to offload from on a CPU
    offloaded = LiveTeacher(_gat(), GAT_TEACHER, torch.device("cuda"), offload=True)
    assert offloaded.mode == "offload" and offloaded.resident() is None
    assert all(p.device.type == "cpu" and not p.requires_grad for p in offloaded.teacher.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offloaded_teacher_leaves_the_device_between_steps():
    device = torch.device("cuda")
    batch = GraphSplit(synthetic_split(8)).collate(torch.arange(8)).to(device)
    live = LiveTeacher(_gat(), GAT_TEACHER, device, offload=True)
    before = torch.cuda.memory_allocated(device)
    out = live(batch)
    assert out["logits"].device.type == "cuda"
    del out
    assert torch.cuda.memory_allocated(device) == before
    assert all(p.device.type == "cpu" for p in live.teacher.parameters())


# -- the stage -------------------------------------------------------------------------------------

def test_student_stage_trains_kd_baseline_and_vgae_students(tmp_path):
    run = fresh_run(tmp_path)
    result = run_stage(run.path, "student")
    assert set(result["classifiers"]) == {"student", "student_no_kd"}
    assert result["classifiers"]["student"] == result["best_checkpoint"]
    assert result["param_ratio"] <= 0.2 and result["models"]["vgae"]["param_ratio"] <= 0.2
    assert result["teacher_cache"] and result["teacher_mode"] == "cache" and result["teacher_cache_computed"]
    assert len(list((tmp_path / "cache" / "teacher_outputs").glob("*/train.pt"))) == 2   # GAT logits, VGAE latents
    assert result["anomaly_detectors"]["vgae_student"]["threshold"] > 0
    kd_line = json.loads((run.path / "student" / "kd" / "metrics.jsonl").read_text().splitlines()[0])
    assert kd_line["teacher_mode"] == "cache" and kd_line["teacher_cache"] is True
    base_line = json.loads((run.path / "student" / "no_kd" / "metrics.jsonl").read_text().splitlines()[0])
    assert base_line["teacher_mode"] == "none"


def test_cache_and_live_teacher_train_the_same_student(tmp_path):
    only_kd = ["distill.train_baseline=false", "distill.vgae_student=false", "train.epochs=2"]
    cached = fresh_run(tmp_path / "a", only_kd)
    live = fresh_run(tmp_path / "b", [*only_kd, "distill.use_teacher_cache=false"])
    a, b = run_stage(cached.path, "student"), run_stage(live.path, "student")
    assert a["teacher_mode"] == "cache" and b["teacher_mode"] == "resident" and not b["teacher_cache"]
    wa = torch.load(a["best_checkpoint"], weights_only=True)["state_dict"]
    wb = torch.load(b["best_checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


class _Killed(KeyboardInterrupt):
    """Stands in for SIGTERM/SIGKILL arriving mid-epoch."""


def _kill_after(monkeypatch, steps: int) -> None:
    original = Trainer.train_step
    count = {"n": 0}

    def step(self, batch):
        count["n"] += 1
        if count["n"] == steps:
            raise _Killed()
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)


def _forbid(monkeypatch, target: str, what: str) -> None:
    def boom(*args, **kwargs):
        raise AssertionError(f"{what} was recomputed on resume")
    monkeypatch.setattr(target, boom)


def test_killed_mid_epoch_resumes_without_recomputing_teacher_outputs_or_scores(tmp_path, monkeypatch):
    run = fresh_run(tmp_path, ["distill.vgae_student=false"])
    steps_per_epoch = 240 // 32 + 1

    with monkeypatch.context() as m:                 # student: killed in epoch 2 of the KD student
        _kill_after(m, steps_per_epoch + 3)
        with pytest.raises(_Killed):
            run_stage(run.path, "student")
    assert run.read_status("student")["state"] == "interrupted"
    cache_files = list((tmp_path / "cache" / "teacher_outputs").glob("*/train.pt"))
    assert len(cache_files) == 1
    stamp = cache_files[0].stat().st_mtime_ns
    with monkeypatch.context() as m:
        _forbid(m, "pipeline.can.students.compute_teacher_outputs", "the teacher cache")
        result = run_stage(run.path, "student")
    assert cache_files[0].stat().st_mtime_ns == stamp and result["teacher_cache_computed"] is False
    log = (run.path / "student" / "log").read_text()
    assert "resuming from" in log and "after epoch 1" in log
    epochs = [json.loads(line)["epoch"] for line in (run.path / "student" / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]

    with monkeypatch.context() as m:                 # curriculum: killed in epoch 2, after scoring
        _kill_after(m, steps_per_epoch + 2)
        with pytest.raises(_Killed):
            run_stage(run.path, "curriculum")
    scores = list((tmp_path / "cache" / "difficulty").glob("*/train.pt"))
    assert len(scores) == 1
    stamp = scores[0].stat().st_mtime_ns
    with monkeypatch.context() as m:
        _forbid(m, "pipeline.can.pacing.plan_inference", "the difficulty scoring")
        _forbid(m, "pipeline.can.students.compute_teacher_outputs", "the teacher cache")
        resumed = run_stage(run.path, "curriculum")
    assert scores[0].stat().st_mtime_ns == stamp and resumed["difficulty_computed"] is False
    assert "resuming from" in (run.path / "curriculum" / "log").read_text()

    # resume is exact: an uninterrupted run (scores and teacher outputs still cached) ends with the same weights
    resumed_weights = torch.load(run.path / "curriculum" / "checkpoint.pt", weights_only=True)["model"]
    run_stage(run.path, "curriculum", force=True)
    fresh_weights = torch.load(run.path / "curriculum" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed_weights[k], fresh_weights[k]) for k in fresh_weights)


def test_student_warns_when_it_is_not_small_enough(tmp_path):
    run = fresh_run(tmp_path, ["student_model.hidden=16", "student_model.heads=2", "student_model.layers=2",
                               "student_model.id_embed_dim=8", "student_model.mlp_hidden=16",
                               "distill.train_baseline=false", "distill.vgae_student=false", "train.epochs=1"])
    result = run_stage(run.path, "student")
    assert result["param_ratio"] > 0.2
    assert "distill.max_param_ratio" in (run.path / "student" / "log").read_text()


def test_module_exports_the_documented_kinds():
    assert distill.GAT_TEACHER.levels == {"logits": "graph"}
    assert distill.VGAE_TEACHER.levels == {"mu": "node", "x_hat": "node"}
