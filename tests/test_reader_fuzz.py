"""Property-based fuzzing of every CAN reader: a corrupted file reads as a valid log or one named error.

Inputs come from tests/can_corruptions.py (truncation mid-row, binary junk, NUL bytes, a BOM, CRLF
and mixed newlines, wrong field values and column types, huge and negative numbers, empty lines,
a gzip cut short, Parquet columns of the wrong type). The runs are derandomized, so CI sees the same
examples on every machine; bench/reader_fuzz.py runs the same generator over thousands of inputs.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.can.data.build import preprocess
from pipeline.can.data.readers import LAYOUTS, CanLogError
from pipeline.config import load_profile
from tests.can_corruptions import CASES, LAYOUT_OF, LIMITS, NASTY, SUFFIX, Op, RuleBroken, build, judge, ops_for

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def ops(case: str) -> st.SearchStrategy[list[Op]]:
    op = st.tuples(st.sampled_from(ops_for(case)), st.integers(0, 9999).map(lambda k: k / 10000),
                   st.integers(0, (1 << 16) - 1), st.binary(max_size=16))
    return st.lists(op, min_size=1, max_size=3)


def inputs(cases: tuple[str, ...] = CASES) -> st.SearchStrategy[tuple[str, list[Op], str, int | None]]:
    """(case, ops, layout and limit_rows passed to the reader): mostly auto-detection of whole files."""
    return st.sampled_from(cases).flatmap(lambda case: st.tuples(
        st.just(case), ops(case), st.sampled_from(("auto", LAYOUT_OF[case], *LAYOUTS)), st.sampled_from(LIMITS)))


def fuzz_once(tmp_path: Path, case: str, ops_: list[Op], layout: str, limit_rows: int | None = None) -> list[str]:
    """The outcome ('valid' or 'error') in each bad_rows mode; fails on a broken rule, naming the input."""
    path = tmp_path / f"fuzz{SUFFIX[case]}"
    path.write_bytes(build(case, ops_))
    outcomes = []
    for mode in ("error", "skip"):
        try:
            outcomes.append(f"bad_rows={mode}: {judge(path, layout, mode, limit_rows)}")
        except RuleBroken as exc:
            raise AssertionError(f"{case} {ops_} layout={layout} bad_rows={mode} limit_rows={limit_rows}: "
                                 f"{exc}") from None
    return outcomes


def fuzz_and_count(tmp_path: Path, data: tuple) -> None:
    for outcome in fuzz_once(tmp_path, *data):
        event(outcome)  # shown by --hypothesis-show-statistics: both outcomes must occur


@pytest.mark.parametrize("case", CASES)
def test_clean_inputs_read_valid(tmp_path, case):
    path = tmp_path / f"clean{SUFFIX[case]}"
    path.write_bytes(build(case, []))
    assert judge(path) == "valid"


@FUZZ
@given(data=inputs(("header_csv", "header_csv_gz")))
def test_corrupted_header_csv_reads_valid_or_one_named_error(tmp_path, data):
    fuzz_and_count(tmp_path, data)


@FUZZ
@given(data=inputs(("car_hacking_csv", "car_hacking_txt")))
def test_corrupted_car_hacking_logs_read_valid_or_one_named_error(tmp_path, data):
    fuzz_and_count(tmp_path, data)


@FUZZ
@given(data=inputs(("parquet",)))
def test_corrupted_parquet_reads_valid_or_one_named_error(tmp_path, data):
    fuzz_and_count(tmp_path, data)


@pytest.mark.parametrize("value", NASTY)
@pytest.mark.parametrize("case,field", [("header_csv", 1), ("header_csv", 2), ("header_csv", 3),
                                        ("car_hacking_csv", 1), ("car_hacking_csv", 2)])
def test_every_nasty_value_in_every_field_keeps_the_rule(tmp_path, case, field, value):
    # set_field puts NASTY[which % len(NASTY)] into field which % fields: pick which to hit both.
    fields = 4 if case == "header_csv" else 12
    which = next(w for w in range(len(NASTY) * fields) if w % len(NASTY) == NASTY.index(value) and w % fields == field)
    fuzz_once(tmp_path, case, [("set_field", 0.5, which, b"")], "auto")


# -- through the preprocess stage ------------------------------------------------------------------

GOOD_TRAIN = "timestamp,arbitration_id,data_field,attack\n" + "".join(
    f"{i * 0.01:.2f},{0x100 + i % 5:03X},{i % 256:02X}00,{int(i % 7 == 0)}\n" for i in range(40))


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=inputs(("header_csv", "header_csv_gz", "car_hacking_csv", "parquet")))
def test_preprocess_on_a_corrupted_file_writes_no_cache(tmp_path, data):
    case, ops_, _, _ = data
    root = tmp_path / "data"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    (root / "ds" / "train_01").mkdir(parents=True)
    (root / "ds" / "test_01_x").mkdir(parents=True)
    (root / "ds" / "train_01" / "good.csv").write_text(GOOD_TRAIN)
    victim = root / "ds" / "test_01_x" / f"victim{SUFFIX[case]}"
    victim.write_bytes(build(case, ops_))
    profile = load_profile("local", [f"data_root={root}", "data.dataset=ds", f"data.cache_dir={tmp_path / 'cache'}",
                                     "data.window=4"])
    log = logging.getLogger("test.fuzz.preprocess")
    try:
        summary = preprocess(profile, log)
    except CanLogError as exc:
        event("preprocess refused the file")
        assert str(victim) in str(exc) and "\n" not in str(exc)
        cache_root = tmp_path / "cache"
        assert not cache_root.exists() or list(cache_root.iterdir()) == [], "a failed preprocess left files behind"
    else:
        event("preprocess read the file")
        assert (Path(summary["cache_dir"]) / "manifest.json").is_file()
