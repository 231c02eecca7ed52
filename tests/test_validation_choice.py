"""Where each train file's validation block lies, the label histograms of every split, and the
preprocess warning when validation holds no attack window."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.status import status_report
from pipeline import io
from pipeline.can.data.build import window_train_file
from pipeline.can.data.cache import GraphSplit
from pipeline.can.data.readers import CanLog
from pipeline.can.data.splits import choose_validation, train_val_rows, window_labels
from pipeline.can.data.windows import num_windows
from pipeline.config import load_profile
from pipeline.runner import run_stage
from pipeline.runs import RunDir
from pipeline.stage_warnings import stage_warnings

WINDOW = 20
IDS = np.array([0x110, 0x2A0, 0x316, 0x370])


# -- builders ----------------------------------------------------------------------------------

def write_capture(path: Path, labels: np.ndarray, seed: int = 0) -> None:
    """A can-train-and-test CSV with random ids and payloads and the given per-message labels."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(IDS, labels.shape[0])
    payload = rng.integers(0, 256, (labels.shape[0], 8), dtype=np.uint8)
    lines = ["timestamp,arbitration_id,data_field,attack"]
    lines += [f"{1.0 + k * 0.001:.6f},{ids[k]:03X},{payload[k].tobytes().hex().upper()},{int(labels[k])}"
              for k in range(labels.shape[0])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def attacks_at(rows: int, *spans: tuple[int, int]) -> np.ndarray:
    labels = np.zeros(rows, dtype=np.uint8)
    for start, stop in spans:
        labels[start:stop] = 1
    return labels


def preprocess_dataset(tmp_path: Path, files: dict[str, np.ndarray], *overrides: str) -> tuple[dict, RunDir]:
    """Write ``files`` (relative path -> labels) under a dataset folder and run the preprocess stage on it."""
    for seed, (rel, labels) in enumerate(files.items()):
        write_capture(tmp_path / "ds" / rel, labels, seed)
    profile = load_profile("local", [f"data_root={tmp_path}", "data.dataset=ds", f"data.cache_dir={tmp_path / 'cache'}",
                                     f"data.window={WINDOW}", *overrides])
    run = RunDir.create(profile, root=tmp_path / "runs", run_id="r")
    return run_stage(run.path, "preprocess"), run


def sources_by_path(manifest: dict) -> dict[str, dict]:
    return {s["path"]: s for s in manifest["sources"]}


def synthetic_log(labels: np.ndarray, seed: int = 0) -> CanLog:
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    return CanLog(ts=np.arange(n, dtype=np.float64) * 1e-3, can_id=rng.choice(IDS, n).astype(np.uint32),
                  dlc=np.full(n, 8, np.uint8), payload=rng.integers(0, 256, (n, 8), dtype=np.uint8),
                  label=labels.astype(np.uint8))


# -- where validation lies ---------------------------------------------------------------------

def test_validation_block_holds_attacks_when_the_tail_has_none(tmp_path):
    rows = 2000  # 100 windows of 20; validation takes 20 of them
    mid = attacks_at(rows, (600, 1000))
    old_head, old_tail = train_val_rows(rows, WINDOW, WINDOW, 0.2)
    assert not mid[old_tail].any()  # the old rule: a validation tail without a single attack

    record, run = preprocess_dataset(tmp_path, {"train_01_attack_free/free.csv": np.zeros(rows, np.uint8),
                                                "train_02_with_attacks/mid.csv": mid,
                                                "test_01_scenario/t.csv": attacks_at(400, (100, 200))})
    manifest = io.read_json(Path(record["cache_dir"]) / "manifest.json")
    chosen = sources_by_path(manifest)["train_02_with_attacks/mid.csv"]["validation"]
    start, stop = chosen["val_rows"]
    assert stop - start == 20 * WINDOW and stop < rows and start < 1000  # a middle block, not the tail
    assert chosen["rule"] == "middle block: both parts hold half their attack share"
    assert chosen["train_rows"] == [[0, start], [stop, rows]]
    # at least half the file's share of attack windows (20 of 100) lies in the 20 validation windows
    assert chosen["attack_windows"]["val"] * 100 >= 20 * 20 / 2
    assert chosen["attack_windows"]["val"] + chosen["attack_windows"]["train"] == 20
    assert chosen["windows"] == {"train": 80, "val": 20}  # stride = window: no window lost to the block edges
    assert manifest["splits"]["val"]["labels"]["1"] == chosen["attack_windows"]["val"] > 0


@pytest.mark.parametrize("stride", [WINDOW, 7, 1])
def test_validation_and_train_windows_never_overlap(stride):
    rows = 1500
    labels = attacks_at(rows, (300, 420), (900, 910))
    log = synthetic_log(labels)
    block = choose_validation(log.label, WINDOW, stride, 0.2)
    train, val = window_train_file(log, WINDOW, stride, block, source=0)
    val_starts, train_starts = val["start_row"].numpy(), train["start_row"].numpy()
    assert val_starts.size == round(0.2 * num_windows(rows, WINDOW, stride))
    assert np.all(np.diff(val_starts) == stride)  # time-contiguous
    val_rows = set(range(int(val_starts[0]), int(val_starts[-1]) + WINDOW))
    train_rows = {int(s) + k for s in train_starts for k in range(WINDOW)}
    assert train_rows.isdisjoint(val_rows)
    assert block.val.start <= val_starts[0] and val_starts[-1] + WINDOW <= block.val.stop
    assert int(val["y"].sum()) > 0


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 600), window=st.integers(2, 30), stride_share=st.floats(0.05, 1.0),
       fraction=st.sampled_from([0.05, 0.2, 0.5]),
       spans=st.lists(st.tuples(st.integers(0, 600), st.integers(1, 80)), max_size=3))
def test_any_label_layout_gives_the_block_nearest_the_tail_with_both_shares(rows, window, stride_share, fraction,
                                                                             spans):
    stride = max(1, round(window * stride_share))
    labels = attacks_at(rows, *((s, s + n) for s, n in spans))
    block = choose_validation(labels, window, stride, fraction)
    for part in block.train:
        assert part.stop <= block.val.start or part.start >= block.val.stop  # no shared row
    total = num_windows(rows, window, stride)
    per_window = [bool(labels[k * stride:k * stride + window].any()) for k in range(total)]
    if total < 2 or not any(per_window):
        assert (block.train[0], block.val) == train_val_rows(rows, window, stride, fraction)
        return
    # The rule spelled out position by position: the last block whose validation holds at least half
    # its proportional share of attack windows and whose train part too, else the last with the first.
    # (shares compared in integers: in / n_val >= attacks / (2 * total) <=> 2 * total * in >= n_val * attacks)
    n_val, attacks = min(max(1, round(fraction * total)), total - 1), sum(per_window)
    assert num_windows(block.val.stop - block.val.start, window, stride) == n_val
    held = [sum(per_window[j:j + n_val]) for j in range(total - n_val + 1)]
    val_ok = [2 * total * h >= n_val * attacks for h in held]
    both = [ok and 2 * total * (attacks - h) >= (total - n_val) * attacks for ok, h in zip(val_ok, held)]
    expected = max(j for j, ok in enumerate(both if any(both) else val_ok) if ok)
    assert block.val.start == expected * stride
    assert np.array_equal(window_labels(labels, window, stride), per_window)


def test_attack_free_file_keeps_tail_validation(tmp_path):
    rows = 2000
    assert choose_validation(np.zeros(rows, np.uint8), WINDOW, 5, 0.2).val == train_val_rows(rows, WINDOW, 5, 0.2)[1]
    record, _ = preprocess_dataset(tmp_path, {"train_01_attack_free/free.csv": np.zeros(rows, np.uint8),
                                              "train_02_with_attacks/spread.csv": attacks_at(rows, (0, 2000)),
                                              "test_01_scenario/t.csv": attacks_at(400, (100, 200))})
    manifest = io.read_json(Path(record["cache_dir"]) / "manifest.json")
    by_path = sources_by_path(manifest)
    free = by_path["train_01_attack_free/free.csv"]["validation"]
    assert free["rule"] == "tail: no attack windows" and free["val_rows"] == [1600, rows]
    assert free["train_rows"] == [[0, 1600]]
    # a file whose tail holds its share of attacks keeps the tail too
    spread = by_path["train_02_with_attacks/spread.csv"]["validation"]
    assert spread["val_rows"] == [1600, rows] and spread["rule"] == "tail: both parts hold half their attack share"
    assert "validation" not in by_path["test_01_scenario/t.csv"]


def test_attacks_only_in_the_tail_are_shared_with_training():
    rows = 2000  # attacks in the last 10 of 100 windows; validation takes 20 windows
    log = synthetic_log(attacks_at(rows, (1800, 2000)))
    block = choose_validation(log.label, WINDOW, WINDOW, 0.2)
    train, val = window_train_file(log, WINDOW, WINDOW, block, source=0)
    assert block.val.stop < rows and block.rule == "middle block: both parts hold half their attack share"
    assert int(train["y"].sum()) >= 10 * 80 / 100 / 2 and int(val["y"].sum()) >= 10 * 20 / 100 / 2
    assert int(train["y"].sum()) + int(val["y"].sum()) == 10


def test_split_histograms_in_manifest(tmp_path):
    rows = 2000
    record, run = preprocess_dataset(tmp_path, {"train_01_attack_free/free.csv": np.zeros(rows, np.uint8),
                                                "train_02_with_attacks/mid.csv": attacks_at(rows, (600, 1000)),
                                                "test_01_scenario/t.csv": attacks_at(400, (100, 200)),
                                                "test_02_suppress/t.csv": np.zeros(400, np.uint8)})
    cache = Path(record["cache_dir"])
    manifest = io.read_json(cache / "manifest.json")
    log = (run.path / "preprocess" / "log").read_text()
    for name, entry in manifest["splits"].items():
        y = GraphSplit.open(cache / entry["file"]).y
        assert entry["labels"] == {"0": int((y == 0).sum()), "1": int((y == 1).sum())}
        assert f"split {name}: {entry['graphs']} windows, label histogram {entry['labels']}" in log
    assert manifest["splits"]["test_02_suppress"]["labels"] == {"0": 20, "1": 0}
    per_file = [s["validation"] for s in manifest["sources"] if "validation" in s]
    for part in ("train", "val"):
        assert sum(v["attack_windows"][part] for v in per_file) == manifest["splits"][part]["labels"]["1"]
    assert record["labels"] == {name: entry["labels"] for name, entry in manifest["splits"].items()}
    assert stage_warnings(run.path / "preprocess") == []


def test_preprocess_warns_when_no_train_file_gives_validation_attacks(tmp_path):
    _, run = preprocess_dataset(tmp_path, {"train_01_attack_free/free.csv": np.zeros(2000, np.uint8),
                                           "test_01_scenario/t.csv": attacks_at(400, (100, 200))})
    (warning,) = stage_warnings(run.path / "preprocess")
    assert "validation holds no attack windows" in warning["message"] and warning["profile_key"] == "data.train_glob"
    assert "validation holds no attack windows" in (run.path / "preprocess" / "log").read_text()
    assert f"warning preprocess: {warning['message']}" in status_report(run.path)


def test_val_files_hold_out_whole_train_files(tmp_path):
    """data.val_files: the matching train files are validation whole (a vehicle training never
    sees), the others are trained on whole, and the vocabulary knows only the trained files' ids."""
    profile = load_profile("local", [f"data.cache_dir={tmp_path / 'cache'}", "data.val_files=*sonata*"])
    run = RunDir.create(profile, root=tmp_path / "runs", run_id="r1")
    record = run_stage(run.path, "preprocess")
    cache = Path(record["cache_dir"])
    manifest = io.read_json(cache / "manifest.json")
    assert manifest["params"]["val_files"] == "*sonata*"
    by_path = {s["path"]: s for s in manifest["sources"] if s["role"] == "train" and not s["duplicate_of"]}
    index = {s["path"]: i for i, s in enumerate(manifest["sources"])}
    held = {p for p in by_path if "sonata" in p}
    assert held == {"train_01_attack_free/attack-free-sonata.csv.gz", "train_02_with_attacks/fuzzing-sonata.csv.gz"}
    for path, entry in by_path.items():
        rows, windows = entry["rows"], entry["validation"]["windows"]
        if path in held:
            assert entry["validation"]["val_rows"] == [0, rows] and windows["train"] == 0
        else:
            assert entry["validation"]["val_rows"] == [rows, rows] and windows["val"] == 0
    train, val = GraphSplit.open(cache / "train.pt"), GraphSplit.open(cache / "val.pt")
    assert set(val.t["source"].tolist()) == {index[p] for p in held}
    assert not set(train.t["source"].tolist()) & {index[p] for p in held}
    assert int(val.y.sum()) > 0                                   # the held-out fuzzing capture
    # Ids seen only in the held-out files are out of vocabulary, as an unseen vehicle's are.
    assert int(train.t["node_id"].min()) >= 1 and int(val.t["node_id"].eq(0).sum()) > 0


def test_val_files_without_attacks_warn_naming_that_key(tmp_path):
    profile = load_profile("local", [f"data.cache_dir={tmp_path / 'cache'}", "data.val_files=*attack-free-sonata*"])
    run = RunDir.create(profile, root=tmp_path / "runs", run_id="r1")
    run_stage(run.path, "preprocess")
    (warning,) = stage_warnings(run.path / "preprocess")
    assert warning["profile_key"] == "data.val_files" and "hold out a train file with attacks" in warning["message"]


@pytest.mark.parametrize("pattern, which", [("*spark*", "no"), ("train_*", "every")])
def test_val_files_must_leave_something_on_each_side(tmp_path, pattern, which):
    profile = load_profile("local", [f"data.cache_dir={tmp_path / 'cache'}", f"data.val_files={pattern}"])
    run = RunDir.create(profile, root=tmp_path / "runs", run_id="r1")
    with pytest.raises(Exception, match=rf"data.val_files='{re.escape(pattern)}' matches {which} train file"):
        run_stage(run.path, "preprocess")
    assert not any((tmp_path / "cache").glob("*/manifest.json"))
