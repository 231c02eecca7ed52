"""Curriculum: pacing functions, the growing loader, chunked difficulty scoring and its cache, the stage."""
import pytest
import torch

from pipeline.can.config import CurriculumConfig
from pipeline.can.data.cache import GraphSplit
from pipeline.can.inference import gather, plan_inference, run_chunked
from pipeline.can.models.vgae import VGAE
from pipeline.can.pacing import CurriculumLoader, admitted_fraction, difficulty_scores, pace, score_graphs
from pipeline.can.plan import BatchPlan
from pipeline.config import ProfileError
from pipeline.runner import run_stage
from pipeline.train import load_model
from tests.helpers import EDGE_FEATURES, NODE_FEATURES, VOCAB, synthetic_split
from tests.kd_helpers import fresh_run, kd_profile


@pytest.mark.parametrize("pacing", ["linear", "root", "geometric", "step"])
def test_pacing_runs_from_start_to_end_and_never_drops(pacing):
    cfg = CurriculumConfig(pacing=pacing, start_fraction=0.2, end_fraction=0.9, steps=3)
    shares = [pace(t / 20, cfg) for t in range(21)]
    assert shares[0] == pytest.approx(0.2) and shares[-1] == pytest.approx(0.9)
    assert all(b >= a - 1e-12 for a, b in zip(shares, shares[1:]))


def test_admitted_share_reaches_the_end_after_the_ramp():
    cfg = CurriculumConfig(pacing="linear", start_fraction=0.5, end_fraction=1.0, ramp_fraction=0.5)
    shares = [admitted_fraction(e, 10, cfg) for e in range(1, 11)]
    assert shares[0] == 0.5 and shares[5:] == [1.0] * 5 and shares[1] == pytest.approx(0.6)
    assert admitted_fraction(2, 2, cfg) == 1.0     # a 2-epoch dry run still ends on the full set


def test_config_rejects_a_shrinking_curriculum():
    with pytest.raises(ProfileError, match="start_fraction"):
        kd_profile(["curriculum.start_fraction=0.9", "curriculum.end_fraction=0.5"])


def _loader(epochs: int = 4, **kw) -> tuple[CurriculumLoader, torch.Tensor, GraphSplit]:
    split = GraphSplit(synthetic_split(60, seed=5))
    scores = torch.rand(60, generator=torch.Generator().manual_seed(1))
    cfg = CurriculumConfig(pacing="linear", start_fraction=0.25, end_fraction=1.0, ramp_fraction=0.5)
    return CurriculumLoader(split, scores, cfg, epochs, batch_size=8, seed=2, **kw), scores, split


def test_loader_starts_with_all_attacks_and_the_easiest_normals_then_grows():
    loader, scores, split = _loader()
    attacks = set(torch.nonzero(split.y == 1).flatten().tolist())
    normal = torch.nonzero(split.y == 0).flatten()
    seen = []
    for epoch in range(1, 5):
        loader.set_epoch(epoch)
        graphs = torch.cat(loader.batches())
        assert len(graphs) == len(set(graphs.tolist())) == loader.num_graphs
        seen.append(set(graphs.tolist()))
        assert attacks <= seen[-1]
    first_normals = seen[0] - attacks
    easiest = set(normal[torch.argsort(scores[normal])][: len(first_normals)].tolist())
    assert first_normals == easiest and len(first_normals) == -(-len(normal) // 4)
    assert seen[0] < seen[1] < seen[2] and seen[2] == seen[3] == set(range(60))


def test_loader_batches_are_a_pure_function_of_the_epoch_and_follow_the_budget():
    a, _, split = _loader(max_nodes=30)
    b, _, _ = _loader(max_nodes=30)
    a.set_epoch(2)
    b.set_epoch(3)
    b.set_epoch(2)
    assert [x.tolist() for x in a.batches()] == [x.tolist() for x in b.batches()]
    sizes = split.nodes_per_graph()
    assert all(int(sizes[idx].sum()) <= 30 or idx.numel() == 1 for idx in a.batches())
    b.max_nodes = 12                       # resume restores a shrunk budget
    assert all(int(sizes[idx].sum()) <= 12 or idx.numel() == 1 for idx in b.batches())
    assert a.shrink(0.5) == a.max_nodes < 30
    assert sum(batch.num_graphs for batch in a) == a.num_graphs


def test_chunked_scores_equal_one_pass_and_chunks_follow_the_cap():
    split = GraphSplit(synthetic_split(50, seed=7))
    model = VGAE(len(VOCAB) + 1, len(NODE_FEATURES), len(EDGE_FEATURES), hidden=4, heads=2, latent_dim=4,
                 id_embed_dim=3).eval()
    device = torch.device("cpu")
    roomy = plan_inference(model, split, score_graphs, device, 0.9)
    assert roomy.graphs == 50
    tight = plan_inference(model, split, score_graphs, device, 0.9, cap_bytes=int(roomy.predicted_bytes / 5))
    assert tight.graphs < 50 and "capped" in tight.reason
    chunks = list(run_chunked(model, score_graphs, split, tight, device))
    assert len(chunks) > 1 and torch.equal(torch.cat([i for i, _ in chunks]), torch.arange(50))
    one = gather(model, score_graphs, split, BatchPlan(10**9, 10**9, 50, 0, "all"), device)["out"]
    assert torch.allclose(gather(model, score_graphs, split, tight, device)["out"], one, atol=1e-5)


def test_stage_scores_once_and_admits_by_difficulty(tmp_path):
    run = fresh_run(tmp_path, ["distill.vgae_student=false", "train.epochs=2"])
    result = run_stage(run.path, "curriculum")
    assert result["difficulty_computed"] is True and result["teacher_mode"] == "cache"
    assert result["param_ratio"] <= 0.2 and result["best_checkpoint"].endswith("curriculum/best.pt")
    vgae_path = run.done_record("autoencoder")["best_checkpoint"]
    split = GraphSplit.open(tmp_path / "cache" / "train.pt")
    scores, cache = difficulty_scores(vgae_path, split, tmp_path / "cache", torch.device("cpu"), 0.9, None,
                                      _quiet())
    assert not cache.computed and str(cache.path) == result["difficulty_scores"]
    model = load_model(vgae_path)
    with torch.no_grad():
        direct = model.score(split.collate(torch.arange(len(split))))
    assert torch.allclose(scores, direct, atol=1e-4)
    log = (run.path / "curriculum" / "log").read_text()
    assert "share of normals per epoch (root pacing): [0.3, 1.0]" in log


def _quiet():
    import logging

    log = logging.getLogger("test.curriculum")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log
