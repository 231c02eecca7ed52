"""The metrics of one split (``pipeline.can.metrics.split_metrics``) against direct scikit-learn calls
on hand-made scores, and the near-trivial mark of ``metrics.md``."""
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn import metrics as skm

from bench.can_scenarios import table as scenario_table
from pipeline import io
from pipeline.can.metrics import NEAR_TRIVIAL_MARGIN, UNDEFINED_WITHOUT_ATTACKS, oracle_f1, split_metrics
from pipeline.can.metrics_table import LEGEND, NEAR_TRIVIAL, markdown_table
from pipeline.can.stages.evaluate import evaluate_detector, evaluate_model, undefined_without_attacks

# ten windows, four attacks; the scores rank two normal windows above an attack
Y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
SCORE = np.array([0.05, 0.10, 0.20, 0.30, 0.62, 0.70, 0.40, 0.65, 0.80, 0.90])
PRED = (SCORE >= 0.5).astype(int)   # operating point: TP 3, FP 2, FN 1, TN 4


def test_every_score_matches_scikit_learn_on_hand_made_scores():
    m = split_metrics(torch.tensor(Y), torch.tensor(SCORE), torch.tensor(PRED))
    assert m["confusion"] == [[4, 2], [1, 3]]
    assert m["prevalence"] == 0.4
    expected = {"auroc": skm.roc_auc_score(Y, SCORE), "average_precision": skm.average_precision_score(Y, SCORE),
                "mcc": skm.matthews_corrcoef(Y, PRED), "balanced_accuracy": skm.balanced_accuracy_score(Y, PRED),
                "f1": skm.f1_score(Y, PRED), "precision": skm.precision_score(Y, PRED),
                "recall": skm.recall_score(Y, PRED), "accuracy": skm.accuracy_score(Y, PRED)}
    assert {k: m[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    # the same numbers worked out by hand, so a wrong argument order above cannot pass unnoticed
    assert m["auroc"] == pytest.approx(21 / 24) and m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["mcc"] == pytest.approx((3 * 4 - 2 * 1) / math.sqrt(5 * 4 * 6 * 5))
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)


def test_ranking_scores_come_from_the_score_not_from_the_predictions():
    hard = split_metrics(Y, PRED.astype(float), PRED)
    soft = split_metrics(Y, SCORE, PRED)
    assert soft["auroc"] == pytest.approx(21 / 24) and hard["auroc"] == pytest.approx(skm.roc_auc_score(Y, PRED))
    assert soft["auroc"] != pytest.approx(hard["auroc"])
    assert {k: soft[k] for k in ("f1", "mcc", "confusion")} == {k: hard[k] for k in ("f1", "mcc", "confusion")}


@pytest.mark.parametrize("attacks,windows", [(1, 10), (4, 10), (9, 10), (1, 1000)])
def test_trivial_f1_is_the_f1_of_calling_every_window_an_attack(attacks, windows):
    y = np.array([1] * attacks + [0] * (windows - attacks))
    p = attacks / windows
    m = split_metrics(y, np.linspace(0, 1, windows), np.zeros(windows, dtype=int))
    assert m["trivial_f1"] == pytest.approx(2 * p / (1 + p))
    assert m["trivial_f1"] == pytest.approx(skm.f1_score(y, np.ones(windows, dtype=int)))


def test_near_trivial_marks_the_all_attack_predictor_and_not_a_perfect_one():
    everything = split_metrics(Y, np.ones(Y.size), np.ones(Y.size, dtype=int))
    assert everything["near_trivial"] is True and everything["f1"] == pytest.approx(everything["trivial_f1"])
    assert everything["mcc"] == 0.0   # a constant prediction on a two-class split: scikit-learn's 0, kept
    perfect = split_metrics(Y, Y.astype(float), Y)
    assert perfect["near_trivial"] is False and perfect["f1"] == 1.0
    # the margin: an F1 just inside it is marked, one just outside is not
    y = np.array([1] * 50 + [0] * 50)   # trivial F1 2/3
    inside = np.array([1] * 50 + [1] * 46 + [0] * 4)   # F1 100/146
    outside = np.array([1] * 50 + [1] * 40 + [0] * 10)   # F1 100/140
    assert abs(100 / 146 - 2 / 3) <= NEAR_TRIVIAL_MARGIN < abs(100 / 140 - 2 / 3)
    assert split_metrics(y, inside, inside)["near_trivial"] is True
    assert split_metrics(y, outside, outside)["near_trivial"] is False


def test_oracle_f1_is_the_best_f1_over_every_threshold():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(int)
    score = y * 0.4 + rng.random(200)   # overlapping classes
    thresholds = np.concatenate([np.unique(score), [score.max() + 1]])
    f1s = [split_metrics(y, score, (score >= t).astype(int))["f1"] for t in thresholds]
    best = split_metrics(y, score, (score >= 0.5).astype(int))["oracle_f1"]
    assert all(best >= f1 - 1e-12 for f1 in f1s)
    assert best == pytest.approx(max(f1s)) and best < 1.0
    assert oracle_f1(Y, SCORE) == pytest.approx(0.8)   # threshold 0.40: TP 4, FP 2, FN 0
    assert split_metrics(Y, Y * 5.0 + 1.0, np.zeros(Y.size, dtype=int))["oracle_f1"] == 1.0   # separable


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [1, 1, 1, 1], []])
def test_one_class_and_empty_splits_give_nan_not_warnings(labels):
    y = np.array(labels, dtype=int)
    score = np.linspace(0.1, 0.9, y.size)
    pred = (score >= 0.5).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = split_metrics(y, score, pred)
    assert math.isnan(m["auroc"]) and math.isnan(m["mcc"])   # no ROC curve; MCC 0/0 (scikit-learn says 0)
    if y.size and y.max() == 1:   # attacks only: the attack-class scores stay defined
        assert m["f1"] == pytest.approx(skm.f1_score(y, pred)) and m["trivial_f1"] == 1.0
        assert m["oracle_f1"] == 1.0 and m["average_precision"] == 1.0 and m["near_trivial"] is False
    else:
        assert all(math.isnan(m[k]) for k in UNDEFINED_WITHOUT_ATTACKS if k != "near_trivial")
        assert m["near_trivial"] is None
    if y.size == 0:
        assert math.isnan(m["prevalence"]) and math.isnan(m["accuracy"])
    else:
        assert m["prevalence"] == y.mean() and m["accuracy"] == skm.accuracy_score(y, pred)


def test_a_split_without_attacks_gets_nulls_and_a_note_in_its_row():
    y = np.zeros(4, dtype=int)
    m = split_metrics(y, np.array([0.1, 0.2, 0.9, 0.3]), np.array([0, 0, 1, 0]))
    row = undefined_without_attacks({"graphs": 4, "attacks": 0, **m})
    assert all(row[k] is None for k in UNDEFINED_WITHOUT_ATTACKS)
    assert row["accuracy"] == 0.75 and row["prevalence"] == 0.0 and row["confusion"] == [[3, 1], [0, 0]]
    assert row["note"] == "no attack windows: F1 undefined"
    table = markdown_table([{"model": "teacher", "split": "s", **row}])
    assert "| teacher | s | 4 | 0 | 0.0000 | undefined | undefined | undefined | 0.7500 | undefined |" in table
    # an undefined score on a split with attacks (no normal windows: no ROC curve) is null too, without the note
    row = undefined_without_attacks({"graphs": 4, "attacks": 4, **split_metrics(np.ones(4), np.ones(4), np.ones(4))})
    assert row["auroc"] is None and row["mcc"] is None and row["f1"] == 1.0 and "note" not in row


class _Batch:
    """A batch of hand-made windows: labels, a classifier's logits and a detector's scores."""

    def __init__(self, y, score):
        self.y = torch.tensor(y)
        self.score = torch.tensor(score, dtype=torch.float32)
        self.logits = torch.stack([torch.zeros(len(y)), torch.logit(self.score.double()).float()], dim=1)

    def to(self, *args, **kwargs):
        return self


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        return batch.logits

    def score(self, batch):
        return batch.score


def test_evaluate_rows_rank_by_the_attack_probability_and_the_anomaly_score():
    loader = [_Batch(Y[:5], SCORE[:5]), _Batch(Y[5:], SCORE[5:])]
    row, (probability, labels), _ = evaluate_model(_Model(), loader)
    assert probability == pytest.approx(SCORE, abs=1e-6) and (labels == Y).all()
    assert row["auroc"] == pytest.approx(21 / 24) and row["oracle_f1"] == pytest.approx(0.8)
    assert row["confusion"] == [[4, 2], [1, 3]] and row["graphs"] == 10 and row["attacks"] == 4
    row, (error, _) = evaluate_detector(_Model(), loader, threshold=0.66)
    assert error == pytest.approx(SCORE, abs=1e-6) and row["auroc"] == pytest.approx(21 / 24)
    assert row["confusion"] == [[5, 1], [2, 2]] and row["mcc"] == pytest.approx(skm.matthews_corrcoef(Y, SCORE >= 0.66))


def test_the_logit_margin_keeps_apart_what_a_saturated_probability_merges():
    """Per-capture normalisation of a classifier reads its logit margin: a confident model's windows
    all have probability 1.0 in float32, and their clipped logits one value, but distinct margins."""
    batch = _Batch([1, 1, 1, 0], [0.5, 0.5, 0.5, 0.5])
    batch.logits = torch.tensor([[0.0, 30.0], [0.0, 45.0], [-5.0, 60.0], [0.0, -3.0]])
    _, (probability, _), (margin, labels) = evaluate_model(_Model(), [batch])
    assert probability[:3].tolist() == [1.0, 1.0, 1.0]
    assert margin.dtype == np.float64 and margin.tolist() == [30.0, 45.0, 65.0, -3.0]
    assert labels.tolist() == [1, 1, 1, 0]


def _row(model, split, y, pred):
    return {"model": model, "split": split, "graphs": len(y), "attacks": int(sum(y)),
            **split_metrics(np.array(y), np.array(pred, dtype=float), np.array(pred))}


def test_metrics_md_marks_near_trivial_rows_and_explains_the_mark():
    y = [0, 0, 1, 1, 1, 1, 1, 1]
    rows = [_row("lazy", "test_01", y, [1] * 8), _row("good", "test_01", y, y)]
    lines = markdown_table(rows).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:13] == ["model", "split", "graphs", "attacks", "prevalence", "AUROC", "AP", "MCC", "bal. acc.",
                         "F1", "trivial F1", "oracle F1", "vs trivial"]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:4]}
    assert cells["lazy"][head.index("vs trivial")] == NEAR_TRIVIAL
    assert cells["good"][head.index("vs trivial")] == ""
    assert cells["lazy"][head.index("F1")] == cells["lazy"][head.index("trivial F1")] == "0.8571"
    assert cells["good"][head.index("oracle F1")] == "1.0000"
    assert lines[4:] == ["", LEGEND]
    assert NEAR_TRIVIAL in LEGEND and "never used to choose anything" in LEGEND


def test_scenario_table_lists_every_model_and_run_side_by_side(tmp_path):
    def finished_run(name: str, seed: int, agnostic: bool, auroc: float | None) -> Path:
        run = tmp_path / name
        (run / "evaluate").mkdir(parents=True)
        (run / "profile.yaml").write_text(yaml.safe_dump(
            {"name": "hcrl_sa", "train": {"seed": seed}, "data": {"id_agnostic": agnostic}}))
        row = {"auroc": auroc, "mcc": 0.5, "f1": 0.6, "near_trivial": auroc is None}
        io.write_json(run / "evaluate" / "metrics.json", {
            "scenarios": ["test_02_unknown_vehicle_known_attack"],
            "rows": [{"model": "teacher", "split": s, **row} for s in ("val", "test_02_unknown_vehicle_known_attack")],
            "detector_rows": [{"model": "vgae", "split": "val", **row}], "fusion_rows": []})
        return run

    text = scenario_table([finished_run("a", 0, False, 0.91), finished_run("b", 1, True, None)])
    lines = text.splitlines()
    assert lines[0] == "| model | ids | seed | val | test_02 |"
    assert lines[2] == "| teacher | vocabulary | 0 | 0.910 / 0.500 / 0.600 | 0.910 / 0.500 / 0.600 |"
    assert lines[3] == "| teacher | agnostic | 1 | undef. / 0.500 / 0.600 ⚠ | undef. / 0.500 / 0.600 ⚠ |"
    assert lines[4].startswith("| vgae | vocabulary | 0 |") and lines[4].endswith("| – |")
    assert "test_02_unknown_vehicle_known_attack" in text
