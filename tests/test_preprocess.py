"""Splits and the preprocess stage on the bundled real sample (data/sample/hcrl_sa)."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import io
from pipeline.can.data import build as stage
from pipeline.can.data.cache import GraphSplit
from pipeline.can.data.readers import CanLogError
from pipeline.can.data.splits import SplitError, discover_sources, train_val_rows
from pipeline.config import load_profile
from pipeline.runner import run_stage
from pipeline.runs import RunDir

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "hcrl_sa"
SCENARIOS = ["test_01_known_vehicle_known_attack", "test_02_unknown_vehicle_known_attack",
             "test_03_known_vehicle_unknown_attack", "test_04_unknown_vehicle_unknown_attack"]


def run_preprocess(tmp_path: Path, *overrides: str, run_id: str = "r1") -> tuple[dict, RunDir]:
    profile = load_profile("local", [f"data.cache_dir={tmp_path / 'cache'}", *overrides])
    run = RunDir.create(profile, root=tmp_path / "runs", run_id=run_id)
    return run_stage(run.path, "preprocess"), run


@pytest.fixture
def read_calls(monkeypatch) -> list[Path]:
    """Every file the stage parses."""
    calls: list[Path] = []
    real = stage.load_can_log

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(stage, "load_can_log", counting)
    return calls


def copy_sample(tmp_path: Path) -> Path:
    target = tmp_path / "data" / "ds"
    shutil.copytree(SAMPLE, target)
    return target


# -- splits --------------------------------------------------------------------------------------

def test_discovery_orders_roles_and_marks_duplicates():
    sources = discover_sources(SAMPLE)
    assert [s.role for s in sources] == ["train"] * 5 + ["test"] * 5
    assert sorted({s.scenario for s in sources if s.role == "test"}) == SCENARIOS
    dups = {s.rel: s.duplicate_of for s in sources if s.duplicate_of}
    assert dups == {"train_02_with_attacks/attack-free-kia.csv.gz": "train_01_attack_free/attack-free-kia.csv.gz"}


def test_recompressed_copy_is_a_duplicate(tmp_path):
    """The same capture gzipped twice differs in header bytes (mtime) but is still read once."""
    ds = tmp_path / "ds"
    (ds / "train_a").mkdir(parents=True)
    (ds / "train_b").mkdir()
    (ds / "test_x").mkdir()
    content = b"timestamp,arbitration_id,data_field,attack\n1.0,081,00,0\n"
    (ds / "train_a" / "cap.csv.gz").write_bytes(gzip.compress(content, mtime=1))
    (ds / "train_b" / "cap.csv.gz").write_bytes(gzip.compress(content, mtime=2))
    (ds / "train_b" / "other.csv.gz").write_bytes(gzip.compress(content + b"2.0,081,00,0\n", mtime=1))
    (ds / "test_x" / "plain.csv").write_bytes(content)
    (ds / "test_x" / "recompressed.csv.gz").write_bytes(gzip.compress(content, compresslevel=1))
    (ds / "test_x" / "README.md").write_text("not a log")
    dups = {s.rel: s.duplicate_of for s in discover_sources(ds)}
    assert dups == {"train_a/cap.csv.gz": None, "train_b/cap.csv.gz": "train_a/cap.csv.gz",
                    "train_b/other.csv.gz": None, "test_x/plain.csv": "train_a/cap.csv.gz",
                    "test_x/recompressed.csv.gz": "train_a/cap.csv.gz"}


def test_missing_folders_are_named(tmp_path):
    (tmp_path / "train_1").mkdir()
    with pytest.raises(SplitError, match=r"no train files in .*train_glob='train_\*'"):
        discover_sources(tmp_path)
    (tmp_path / "train_1" / "a.csv").write_text("x")
    with pytest.raises(SplitError, match=r"no test scenarios in .*test_glob='test_\*'"):
        discover_sources(tmp_path)


@pytest.mark.parametrize("rows,window,stride", [(15000, 100, 100), (1050, 100, 50), (999, 10, 3), (150, 100, 100)])
def test_val_is_the_time_contiguous_tail(rows, window, stride):
    head, tail = train_val_rows(rows, window, stride, 0.2)
    assert head.start == 0 and head.stop == tail.start and tail.stop == rows
    train_starts = list(range(0, head.stop - window + 1, stride))
    val_starts = list(range(tail.start, rows - window + 1, stride))
    if train_starts and val_starts:
        assert train_starts[-1] + window <= val_starts[0]  # no shared message
        assert abs(len(val_starts) / (len(train_starts) + len(val_starts)) - 0.2) < 0.1
    if rows < 2 * window:
        assert tail.start == rows  # too short for a tail: all train


# -- the stage -----------------------------------------------------------------------------------

def test_preprocess_sample(tmp_path, read_calls):
    record, run = run_preprocess(tmp_path)
    cache = Path(record["cache_dir"])
    assert cache.parent == tmp_path / "cache" and cache.name == record["result_key"]
    assert sorted(p.name for p in cache.iterdir()) == sorted(["manifest.json", "train.pt", "val.pt",
                                                              *(f"{s}.pt" for s in SCENARIOS)])
    manifest = io.read_json(cache / "manifest.json")
    assert manifest["key"] == record["result_key"]
    assert manifest["scenarios"] == SCENARIOS
    assert manifest["params"] == {"layout": "auto", "window": 100, "stride": 100, "val_fraction": 0.2,
                                  "limit_rows": None, "bad_rows": "error", "columns": {}, "val_files": None,
                                  "id_agnostic": False, "feature_version": 2,
                                  "reader_version": 2}
    assert manifest["node_features"][0] == "count" and len(manifest["edge_features"]) == 3
    assert manifest["vocab"] == sorted(manifest["vocab"]) and manifest["bad_rows_total"] == 0

    # The duplicate is recorded but parsed once.
    dup = [s for s in manifest["sources"] if s["duplicate_of"]]
    assert [s["path"] for s in dup] == ["train_02_with_attacks/attack-free-kia.csv.gz"] and dup[0]["rows"] == 0
    assert len(read_calls) == 9 and all("train_02_with_attacks/attack-free-kia" not in str(p) for p in read_calls)
    assert all(s["rows"] == 15000 for s in manifest["sources"] if not s["duplicate_of"])

    # 4 distinct train files x 150 windows: 120 head + 30 tail each; test files 150 windows each.
    assert record["graphs"] == {"train": 480, "val": 120, SCENARIOS[0]: 300, SCENARIOS[1]: 150,
                                SCENARIOS[2]: 150, SCENARIOS[3]: 150}
    for name, entry in manifest["splits"].items():
        split = GraphSplit.open(cache / entry["file"])
        assert len(split) == entry["graphs"]
        assert int(split.y.sum()) == entry["labels"]["1"] and entry["labels"]["0"] + entry["labels"]["1"] == len(split)
        assert split.num_node_features == len(manifest["node_features"])
        assert torch.isfinite(split.t["x"]).all() and torch.isfinite(split.t["edge_attr"]).all()
    assert manifest["splits"][SCENARIOS[0]]["labels"]["1"] > 0

    # Validation windows come after every train window of the same file.
    train, val = GraphSplit.open(cache / "train.pt"), GraphSplit.open(cache / "val.pt")
    for src in np.unique(val.t["source"].numpy()):
        last_train = int(train.t["start_row"][train.t["source"] == int(src)].max())
        assert int(val.t["start_row"][val.t["source"] == int(src)].min()) >= last_train + 100
    # Test nodes may be out of vocabulary (unknown vehicle); train nodes never are.
    assert int(train.t["node_id"].min()) >= 1
    assert int(GraphSplit.open(cache / f"{SCENARIOS[1]}.pt").t["node_id"].eq(0).sum()) > 0
    assert run.done_record("preprocess")["cache_dir"] == str(cache)


def test_second_run_is_a_no_op(tmp_path, read_calls):
    first, _ = run_preprocess(tmp_path)
    cache = Path(first["cache_dir"])
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    read_calls.clear()
    second, _ = run_preprocess(tmp_path, run_id="r2")
    assert second["cache_dir"] == first["cache_dir"] and second["graphs"] == first["graphs"]
    assert read_calls == []
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes
    third, _ = run_preprocess(tmp_path, "data.window=50", run_id="r3")
    assert third["result_key"] != first["result_key"] and third["graphs"]["train"] == 4 * 240


def test_corrupt_input_leaves_no_cache(tmp_path):
    ds = copy_sample(tmp_path)
    victim = ds / "test_03_known_vehicle_unknown_attack" / "malfunction-kia.csv.gz"
    lines = gzip.decompress(victim.read_bytes()).decode().splitlines()
    lines[101] = lines[101].replace(",0", ",X", 1) if ",0" in lines[101] else lines[101] + ",extra"
    victim.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    overrides = (f"data_root={tmp_path / 'data'}", "data.dataset=ds")
    with pytest.raises(CanLogError, match=r"malfunction-kia\.csv\.gz: line 102"):
        run_preprocess(tmp_path, *overrides)
    cache_root = tmp_path / "cache"
    assert not cache_root.exists() or list(cache_root.iterdir()) == []
    record, _ = run_preprocess(tmp_path, *overrides, "data.bad_rows=skip", run_id="r2")
    manifest = io.read_json(Path(record["cache_dir"]) / "manifest.json")
    assert manifest["bad_rows_total"] == 1
    assert [s["bad_rows"] for s in manifest["sources"] if s["bad_rows"]] == [1]


def test_limit_rows_slices_every_file(tmp_path):
    record, _ = run_preprocess(tmp_path, "data.limit_rows=1000")
    manifest = io.read_json(Path(record["cache_dir"]) / "manifest.json")
    assert {s["rows"] for s in manifest["sources"] if not s["duplicate_of"]} == {1000}
    assert record["graphs"]["train"] == 4 * 8 and record["graphs"]["val"] == 4 * 2


def test_cache_finished_by_another_job_is_not_replaced(tmp_path, monkeypatch):
    first, _ = run_preprocess(tmp_path)
    cache = Path(first["cache_dir"])
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    real = io.keyed_manifest
    calls = []

    def racing(cache_dir, key):
        calls.append(key)
        return None if len(calls) == 1 else real(cache_dir, key)  # not there at the start, there at the end

    monkeypatch.setattr(io, "keyed_manifest", racing)
    second, _ = run_preprocess(tmp_path, run_id="r2")
    assert second["cache_dir"] == str(cache) and len(calls) >= 2
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary left behind


def test_unreadable_cache_split_names_its_path(tmp_path):
    record, _ = run_preprocess(tmp_path, "data.limit_rows=1000")
    split = Path(record["cache_dir"]) / "val.pt"
    split.write_bytes(split.read_bytes()[: split.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{split}.*unreadable.*preprocess"):
        GraphSplit.open(split)
    torch.save({"y": torch.zeros(2)}, split)
    with pytest.raises(ValueError, match=r"val\.pt lacks \['x'"):
        GraphSplit.open(split)
