"""Per-capture score normalisation (pipeline.can.normalise) and the evaluate stage's "+norm" rows."""
import inspect
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline.can.config import EvaluateConfig
from pipeline.can.detector import choose_threshold
from pipeline.can.metrics_table import NORMALISED_NOTE, detector_table
from pipeline.can.normalise import MAD_TO_SIGMA, normalise_scores, warmup_windows
from pipeline.can.stages.evaluate import normalise_split_scores, normalised_rows
from pipeline.runner import run_stage
from pipeline.stages import WORKLOADS
from tests.helpers import run_with_cache, tiny_profile, write_synthetic_cache


def test_known_values_median_zero_mad_scaled():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    out = normalise_scores(scores, np.zeros(5, dtype=int), "median_mad")
    # median 3, absolute deviations [2, 1, 0, 1, 97] -> MAD 1
    np.testing.assert_allclose(out, (scores - 3.0) / MAD_TO_SIGMA)
    assert np.median(out) == 0


def test_constant_scores_are_finite():
    out = normalise_scores(np.full(6, 7.5), np.zeros(6, dtype=int), "median_mad")
    np.testing.assert_array_equal(out, np.zeros(6))
    # MAD 0 but not constant: falls back to the IQR, then to 1; never inf or NaN
    mostly = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 9.0])
    out = normalise_scores(mostly, np.zeros(6, dtype=int), "median_mad")
    assert np.isfinite(out).all() and out[-1] > 0 and (out[:-1] == 0).all()
    warm = normalise_scores(np.array([2.0, 2.0, 5.0]), np.zeros(3, dtype=int), "warmup",
                            np.array([True, True, False]))
    assert np.isfinite(warm).all() and warm[-1] == 3.0


def test_groups_are_normalised_independently():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 50), rng.normal(40, 9, 70)
    groups = np.r_[np.full(50, 3), np.full(70, 11)]
    together = normalise_scores(np.r_[a, b], groups, "median_mad")
    np.testing.assert_allclose(together[:50], normalise_scores(a, np.zeros(50, dtype=int), "median_mad"))
    np.testing.assert_allclose(together[50:], normalise_scores(b, np.zeros(70, dtype=int), "median_mad"))
    # interleaved windows: the same per-group result
    perm = rng.permutation(120)
    np.testing.assert_allclose(normalise_scores(np.r_[a, b][perm], groups[perm], "median_mad"), together[perm])
    # shifting one capture leaves the other's normalised scores alone
    shifted = normalise_scores(np.r_[a, b * 3 + 5], groups, "median_mad")
    np.testing.assert_allclose(shifted[:50], together[:50])


def test_none_is_the_identity():
    scores = np.array([0.3, 0.1, 0.2])
    np.testing.assert_array_equal(normalise_scores(scores, np.array([0, 1, 0]), "none"), scores)


def test_signature_takes_no_label():
    params = inspect.signature(normalise_scores).parameters
    assert list(params) == ["scores", "groups", "method", "warmup_mask"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in params.values())
    with pytest.raises(TypeError):
        normalise_scores(np.zeros(3), np.zeros(3), "median_mad", labels=np.ones(3))


def test_warmup_uses_only_the_warmup_windows():
    groups = np.r_[np.zeros(10, dtype=int), np.ones(10, dtype=int)]
    order = np.r_[np.arange(10)[::-1], np.arange(10)]   # capture 0 is stored last window first
    mask = warmup_windows(groups, order, 3)
    assert mask[[7, 8, 9, 10, 11, 12]].all() and mask.sum() == 6
    rng = np.random.default_rng(1)
    scores = rng.normal(size=20)
    out = normalise_scores(scores, groups, "warmup", mask)
    # scores after the warm-up do not move the reference: the warm-up windows' values stay
    changed = scores.copy()
    changed[~mask] = rng.normal(50, 20, (~mask).sum())
    again = normalise_scores(changed, groups, "warmup", mask)
    np.testing.assert_allclose(again[mask], out[mask])
    # every window is scaled by its capture's warm-up median and MAD
    for g in (0, 1):
        warm = scores[mask & (groups == g)]
        median = np.median(warm)
        scale = MAD_TO_SIGMA * np.median(np.abs(warm - median))
        np.testing.assert_allclose(again[groups == g], (changed[groups == g] - median) / scale)
    # the same scores against the whole capture do depend on the later windows
    assert not np.allclose(normalise_scores(changed, groups, "median_mad")[mask],
                           normalise_scores(scores, groups, "median_mad")[mask])


def test_warmup_of_a_short_capture_is_all_of_it():
    mask = warmup_windows(np.array([5, 5]), np.array([100, 0]), 50)
    assert mask.all()


def test_a_group_without_reference_is_an_error():
    with pytest.raises(ValueError, match="no reference"):
        normalise_scores(np.arange(4.0), np.array([0, 0, 1, 1]), "warmup", np.array([True, False, False, False]))


def _scored(seed: int = 0):
    """val and one scenario of two captures each, the second capture's scores shifted up (another vehicle)."""
    rng = np.random.default_rng(seed)
    out, windows = {}, {}
    for split, n in (("val", 200), ("test_01", 300)):
        y = (rng.random(n) < 0.2).astype(np.int64)
        source = np.repeat([0, 1], [n // 2, n - n // 2])
        scores = rng.normal(0, 1, n) + 3 * y + 10 * source * (split == "test_01")
        out[split] = (scores, y)
        windows[split] = (source, np.tile(np.arange(n), 1) * 100)
    return out, windows


@pytest.mark.parametrize("method", ["median_mad", "warmup"])
def test_evaluate_normalisation_reads_no_label(method):
    scored, windows = _scored()
    flipped = {split: (s, 1 - y) for split, (s, y) in scored.items()}
    rng = np.random.default_rng(5)
    permuted = {split: (s, rng.permutation(y)) for split, (s, y) in scored.items()}
    base = normalise_split_scores(scored, windows, method, 20)
    for other in (flipped, permuted):
        changed = normalise_split_scores(other, windows, method, 20)
        for split in scored:
            np.testing.assert_array_equal(changed[split][0], base[split][0])
            np.testing.assert_array_equal(changed[split][1], other[split][1])
    # the metrics, which do read labels, change
    rows = {r["split"]: r for r in normalised_rows("vgae", scored, windows, method, 20)}
    flipped_rows = {r["split"]: r for r in normalised_rows("vgae", flipped, windows, method, 20)}
    assert rows["test_01"]["auroc"] != flipped_rows["test_01"]["auroc"]


def test_normalised_rows_threshold_from_normalised_val():
    scored, windows = _scored()
    val_scores, val_y = scored["val"]
    scored["val"] = (val_scores * 5 + 20, val_y)   # val's raw scale differs from the scenario's
    rows = normalised_rows("vgae", scored, windows, "median_mad", 20)
    assert [r["model"] for r in rows] == ["vgae+norm", "vgae+norm"]
    assert {r["normalisation"] for r in rows} == {"median_mad"}
    normed_val = normalise_split_scores(scored, windows, "median_mad", 20)["val"][0]
    chosen = choose_threshold(torch.from_numpy(val_y), torch.from_numpy(normed_val))["threshold"]
    assert {r["threshold"] for r in rows} == {chosen}
    test = next(r for r in rows if r["split"] == "test_01")
    assert test["f1"] > 0.7
    # raw scores of capture 1 sit 10 higher: a raw val threshold calls most of it an attack; normalised, it transfers
    raw_threshold = 1.5
    raw_fp = int(((scored["test_01"][0] >= raw_threshold) & (scored["test_01"][1] == 0)).sum())
    assert test["confusion"][0][1] < raw_fp / 3
    assert test["auroc"] > 0.9


def test_metrics_table_notes_normalised_rows():
    scored, windows = _scored()
    rows = normalised_rows("vgae", scored, windows, "median_mad", 20)
    assert NORMALISED_NOTE in detector_table(rows)
    assert "transductive, reads no label" in NORMALISED_NOTE
    plain = [{k: v for k, v in r.items() if k != "normalisation"} for r in rows]
    assert NORMALISED_NOTE not in detector_table(plain)


def test_config_validates_and_is_read_by_evaluate():
    assert EvaluateConfig().score_normalisation == "none"
    assert EvaluateConfig(score_normalisation="warmup", warmup_windows=10).warmup_windows == 10
    with pytest.raises(ValidationError):
        EvaluateConfig(score_normalisation="zscore")
    with pytest.raises(ValidationError):
        EvaluateConfig(warmup_windows=1)
    assert "evaluate" in WORKLOADS["can"].stage("evaluate").reads


def test_evaluate_stage_writes_normalised_rows_beside_the_raw_ones(tmp_path):
    cache = write_synthetic_cache(tmp_path / "cache")
    overrides = ["stages=[preprocess, autoencoder, teacher, evaluate]", "vgae.hidden=8", "vgae.heads=2",
                 "vgae.latent_dim=8", "vgae.id_embed_dim=8", "train.epochs=1", "evaluate.score_normalisation=warmup",
                 "evaluate.warmup_windows=10"]
    run = run_with_cache(tmp_path, tiny_profile(overrides), cache)
    run_stage(run.path, "autoencoder")
    run_stage(run.path, "teacher")
    result = run_stage(run.path, "evaluate")
    metrics = json.loads((run.path / "evaluate" / "metrics.json").read_text())
    names = [(r["model"], r["split"]) for r in metrics["detector_rows"]]
    splits = ["val", "test_01_known", "test_02_unknown"]
    assert names == [("vgae", s) for s in splits] + [("vgae+norm", s) for s in splits]
    # The classifier too, on its logit of attack, under its own rows and at a threshold chosen on normalised val.
    assert [(r["model"], r["split"]) for r in metrics["rows"]] == ([("teacher", s) for s in splits]
                                                                    + [("teacher+norm", s) for s in splits])
    teacher_norm = [r for r in metrics["rows"] if r["model"] == "teacher+norm"]
    assert {r["normalisation"] for r in teacher_norm} == {"warmup"} and len({r["threshold"] for r in teacher_norm}) == 1
    normed = [r for r in metrics["detector_rows"] if r["model"] == "vgae+norm"]
    assert {r["normalisation"] for r in normed} == {"warmup"} and len({r["threshold"] for r in normed}) == 1
    assert NORMALISED_NOTE in (run.path / "evaluate" / "metrics.md").read_text()
    assert "vgae+norm" in result["auroc"] and "vgae+norm" not in result["models"]
    assert not (run.path / "evaluate" / "scores" / "vgae+norm.npz").exists()
