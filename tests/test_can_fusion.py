"""The fusion stage: one detector stacked on the upstream models' scores, fitted on validation only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pipeline import io
from pipeline.can.data.cache import GraphSplit, save_split
from pipeline.can.fusion import MODEL_FILE, FusionModel, feature_matrix, fit_fusion
from pipeline.can.metrics_table import FUSION_HEADING
from pipeline.config import ProfileError, load_profile
from pipeline.errors import InputError
from pipeline.runner import run_stage
from pipeline.stage_warnings import stage_warnings
from pipeline.stages import STAGE_ORDER, WORKLOADS
from tests.helpers import run_with_cache, synthetic_split, tiny_profile, write_synthetic_cache

KINDS = {"teacher": "classifier", "vgae": "detector"}
CHAIN = ["preprocess", "autoencoder", "teacher", "fusion", "evaluate"]
TINY = ["vgae.hidden=8", "vgae.heads=2", "vgae.latent_dim=8", "vgae.id_embed_dim=8", "train.epochs=2"]


def hand_made(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A weak classifier probability and a weak detector error, each carrying independent evidence."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    probability = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    error = np.exp(1.5 * y + rng.normal(0, 1.0, n))
    return {"teacher": probability, "vgae": error}, y


def profile_fusion(method: str = "logistic"):
    return load_profile("local", [f"fusion.method={method}"], check_paths=False).fusion


@pytest.mark.parametrize("method", ["logistic", "isotonic"])
def test_fusion_separates_hand_made_features_better_than_either_input(method):
    val, y_val = hand_made(400, seed=0)
    test, y_test = hand_made(2000, seed=1)
    model, choices = fit_fusion(val, KINDS, y_val, profile_fusion(method))
    assert all(c > 0 for c in choices["coefficients"].values())   # both inputs count, the right way round
    fused = model.probability(test)
    assert 0 <= fused.min() and fused.max() <= 1
    best_single = max(roc_auc_score(y_test, test[name]) for name in KINDS)
    assert roc_auc_score(y_test, fused) > best_single + 0.02
    assert choices["C"]["chosen"] in choices["C"]["grid"]
    assert choices["C"]["cv_log_loss"][str(choices["C"]["chosen"])] == min(choices["C"]["cv_log_loss"].values())
    assert choices["threshold"]["method"] == "max F1 on val" and choices["threshold"]["threshold"] == model.threshold
    assert choices["calibration"]["method"] == method


@pytest.mark.parametrize("method", ["logistic", "isotonic"])
def test_the_saved_model_reloads_to_identical_scores(tmp_path, method):
    val, y_val = hand_made(300, seed=2)
    test, _ = hand_made(500, seed=3)
    # Inputs out of alphabetical order: the coefficients must still meet their own input once reloaded.
    val["student"], test["student"] = 1 - val["teacher"], 1 - test["teacher"]
    kinds = {"vgae": "detector", "teacher": "classifier", "student": "classifier"}
    model, choices = fit_fusion(val, kinds, y_val, profile_fusion(method))
    model.save(tmp_path / MODEL_FILE)
    assert json.loads((tmp_path / MODEL_FILE).read_text())["coef"] == model.coef   # plain numbers, no pickle
    reloaded = FusionModel.load(tmp_path / MODEL_FILE)
    assert reloaded == model and list(reloaded.inputs) == list(kinds)
    old_format = {**json.loads((tmp_path / MODEL_FILE).read_text()), "inputs": kinds}
    (tmp_path / "old.json").write_text(json.dumps(old_format, sort_keys=True))
    with pytest.raises(InputError, match="old.json: a fusion model saved with its inputs as a JSON object"):
        FusionModel.load(tmp_path / "old.json")
    np.testing.assert_array_equal(reloaded.probability(test), model.probability(test))
    if method == "logistic":   # the numbers are scikit-learn's fit at the chosen C
        x = feature_matrix(kinds, val)
        xs = (x - x.mean(0)) / x.std(0)
        reference = LogisticRegression(C=choices["C"]["chosen"], max_iter=1000).fit(xs, y_val)
        np.testing.assert_allclose(model.probability(val), reference.predict_proba(xs)[:, 1], rtol=1e-6)


def test_a_one_class_validation_cannot_fit_it():
    val, _ = hand_made(100, seed=4)
    with pytest.raises(ValueError, match="validation holds 1 attack and 99 normal windows"):
        fit_fusion(val, KINDS, np.eye(1, 100, dtype=np.int64)[0], profile_fusion())


def test_fusion_settings_are_validated():
    with pytest.raises(ProfileError, match="fusion.c_grid"):
        load_profile("local", ["fusion.c_grid=[1.0, 0.0]"], check_paths=False)
    with pytest.raises(ProfileError, match="fusion.method"):
        load_profile("local", ["fusion.method=forest"], check_paths=False)


def test_the_can_chain_runs_fusion_after_the_student_and_before_evaluate():
    can = WORKLOADS["can"]
    assert set(can.stage("fusion").needs) == {"preprocess", "teacher", "autoencoder", "student"}
    assert "fusion" in can.stage("evaluate").needs
    chain = load_profile("hcrl_sa", check_paths=False).stages
    assert chain.index("student") < chain.index("fusion") < chain.index("evaluate")
    assert STAGE_ORDER.index("student") < STAGE_ORDER.index("fusion") < STAGE_ORDER.index("evaluate")


# -- the stage ------------------------------------------------------------------------------------

def _relabel(cache: Path, split: str, flip_every: int) -> None:
    """Flip the label of every ``flip_every``-th window of ``split`` (the graphs stay the same)."""
    path = cache / io.read_json(cache / "manifest.json")["splits"][split]["file"]
    tensors = {k: v.clone() for k, v in GraphSplit.open(path).t.items()}
    tensors["y"][::flip_every] = 1 - tensors["y"][::flip_every]
    save_split(tensors, path)


def _learned(run_path: Path) -> tuple[bytes, bytes]:
    return (run_path / "fusion" / "choices.json").read_bytes(), (run_path / "fusion" / "model.json").read_bytes()


def test_fusion_is_fitted_on_validation_only_and_evaluated_on_every_split(tmp_path):
    cache = write_synthetic_cache(tmp_path / "cache")
    run = run_with_cache(tmp_path, tiny_profile([f"stages=[{', '.join(CHAIN)}]", *TINY]), cache)
    run_stage(run.path, "autoencoder")
    run_stage(run.path, "teacher")
    fusion = run_stage(run.path, "fusion")
    assert fusion["inputs"] == ["teacher", "vgae"] and fusion["method"] == "logistic"
    choices = json.loads((run.path / "fusion" / "choices.json").read_text())
    assert choices["fitted_on"] == "val" and choices["val"]["graphs"] == 80
    assert set(choices["coefficients"]) == {"teacher", "vgae"}
    assert choices["threshold"]["threshold"] == fusion["threshold"]
    learned = _learned(run.path)

    result = run_stage(run.path, "evaluate")
    metrics = json.loads((run.path / "evaluate" / "metrics.json").read_text())
    rows = {r["split"]: r for r in metrics["fusion_rows"]}
    assert list(rows) == ["val", "test_01_known", "test_02_unknown"]
    assert all(r["model"] == "fusion" and r["threshold"] == fusion["threshold"] for r in rows.values())
    assert rows["val"]["graphs"] == 80 and rows["val"]["auroc"] == pytest.approx(choices["val"]["auroc"], abs=1e-3)
    assert set(result["auroc"]["fusion"]) == set(rows)
    assert FUSION_HEADING in (run.path / "evaluate" / "metrics.md").read_text()
    assert (run.path / "evaluate" / "scores" / "fusion.npz").exists()

    # the test scenarios' labels are never read: flipping them changes nothing fusion learns
    _relabel(cache, "test_01_known", 2)
    _relabel(cache, "test_02_unknown", 3)
    run_stage(run.path, "fusion", force=True)
    assert _learned(run.path) == learned
    # validation's labels are what it learns from
    _relabel(cache, "val", 4)
    run_stage(run.path, "fusion", force=True)
    changed = _learned(run.path)
    assert changed[0] != learned[0] and changed[1] != learned[1]


def test_a_one_class_validation_skips_fusion_with_a_warning_naming_the_key(tmp_path):
    cache = write_synthetic_cache(tmp_path / "cache")
    save_split(synthetic_split(40, attack_rate=0.0, seed=5), cache / "val.pt")
    run = run_with_cache(tmp_path, tiny_profile(["stages=[preprocess, teacher, fusion, evaluate]",
                                                 "train.epochs=1"]), cache)
    run_stage(run.path, "teacher")
    fusion = run_stage(run.path, "fusion")
    assert fusion["skipped"] == ("validation holds 0 attack and 40 normal windows; fusion needs at least 2 of "
                                 "each to fit and choose C")
    assert json.loads((run.path / "fusion" / "choices.json").read_text())["skipped"] == fusion["skipped"]
    assert not (run.path / "fusion" / "model.json").exists()
    (warning,) = stage_warnings(run.path / "fusion")
    assert warning["profile_key"] == "data.val_fraction"
    run_stage(run.path, "evaluate")
    assert json.loads((run.path / "evaluate" / "metrics.json").read_text())["fusion_rows"] == []
    assert "fusion: no rows, it was not fitted" in (run.path / "evaluate" / "log").read_text()

