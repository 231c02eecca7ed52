"""Raw CAN readers: every layout, hex edge cases, and every kind of bad input named by file and line."""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.can.data.readers import CanLogError, detect_layout, read_can_log

CTT_HEADER = "timestamp,arbitration_id,data_field,attack\n"


def write(path: Path, text: str, gz: bool = False) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def ctt(tmp_path: Path, rows: list[str], name: str = "log.csv", gz: bool = False) -> Path:
    return write(tmp_path / name, CTT_HEADER + "".join(r + "\n" for r in rows), gz)


def payload_row(*values: int) -> list[int]:
    return list(values) + [0] * (8 - len(values))


# -- can-train-and-test -------------------------------------------------------------------------

def test_can_train_and_test_columns(tmp_path):
    path = ctt(tmp_path, [
        "1513920477.249737,2A0,60006E1DCC04E300,0",
        "1513920477.25,081,,1",
        "1513920477.3,5,ab,0",
        "1513920477.4,1FFFFFFF,deadBEEF01,1",
    ])
    log = read_can_log(path)
    assert log.layout == "can_train_and_test" and len(log) == 4 and log.bad_rows == 0
    assert log.ts.dtype == np.float64 and log.ts[0] == pytest.approx(1513920477.249737)
    assert log.can_id.dtype == np.uint32 and log.can_id.tolist() == [0x2A0, 0x081, 0x5, 0x1FFFFFFF]
    assert log.dlc.tolist() == [8, 0, 1, 5]
    assert log.payload.dtype == np.uint8 and log.payload.shape == (4, 8)
    assert log.payload.tolist() == [
        [0x60, 0x00, 0x6E, 0x1D, 0xCC, 0x04, 0xE3, 0x00],
        payload_row(),
        payload_row(0xAB),
        payload_row(0xDE, 0xAD, 0xBE, 0xEF, 0x01),
    ]
    assert log.label.tolist() == [0, 1, 0, 1]


def test_gzip_equals_plain_and_keeps_file_order(tmp_path):
    rows = ["3.0,1F4,0102,0", "1.0,081,03,1", "2.0,7DF,,0"]
    plain = read_can_log(ctt(tmp_path, rows, "a.csv"))
    packed = read_can_log(ctt(tmp_path, rows, "b.csv.gz", gz=True))
    for col in ("ts", "can_id", "dlc", "payload", "label"):
        np.testing.assert_array_equal(getattr(plain, col), getattr(packed, col))
    assert plain.ts.tolist() == [3.0, 1.0, 2.0]  # not sorted


def test_limit_rows_and_blank_lines(tmp_path):
    path = ctt(tmp_path, [f"{i}.0,{i:03X},00,0" for i in range(10)] + [""])
    assert len(read_can_log(path)) == 10
    log = read_can_log(path, limit_rows=4)
    assert log.can_id.tolist() == [0, 1, 2, 3]


def test_column_order_and_extra_columns(tmp_path):
    path = write(tmp_path / "x.csv", "attack,extra,data_field,arbitration_id,timestamp\n1,zz,0A,100,5.5\n")
    log = read_can_log(path)
    assert log.can_id.tolist() == [0x100] and log.payload[0, 0] == 10 and log.label.tolist() == [1]


# -- Car-Hacking CSV / OTIDS text / parquet ------------------------------------------------------

def test_car_hacking_csv_short_rows(tmp_path):
    path = write(tmp_path / "DoS_dataset.csv", "\n".join([
        "1478198376.389427,0316,8,05,21,68,09,21,21,00,6f,R",
        "1478198376.389636,018f,8,fe,5b,00,00,00,3c,00,00,T",
        "1478198376.389864,0260,2,19,21,R",
        "1478198376.390000,0000,0,T",
    ]) + "\n", gz=True)
    assert detect_layout(path) == "car_hacking_csv"
    log = read_can_log(path)
    assert log.can_id.tolist() == [0x316, 0x18F, 0x260, 0]
    assert log.dlc.tolist() == [8, 8, 2, 0]
    assert log.payload[0].tolist() == [0x05, 0x21, 0x68, 0x09, 0x21, 0x21, 0x00, 0x6F]
    assert log.payload[2].tolist() == payload_row(0x19, 0x21)
    assert log.payload[3].tolist() == payload_row()
    assert log.label.tolist() == [0, 1, 0, 1]


def test_car_hacking_txt(tmp_path):
    path = write(tmp_path / "Attack_free_dataset.txt", "\n".join([
        "Timestamp: 1479121434.850202        ID: 0350    000    DLC: 8    05 28 84 66 6d 00 00 a2",
        "Timestamp: 1479121434.850423        ID: 02c0    000    DLC: 8    14 00 00 00 00 00 00 00",
        "Timestamp: 1479121434.851000        ID: 0000    100    DLC: 4",
        "Timestamp: 1479121434.852000        ID: 0545    000    DLC: 3    d8 00 8d",
    ]) + "\n")
    assert detect_layout(path) == "car_hacking_txt"
    log = read_can_log(path)
    assert log.can_id.tolist() == [0x350, 0x2C0, 0, 0x545]
    assert log.dlc.tolist() == [8, 8, 4, 3]  # a remote frame states a DLC but carries no bytes
    assert log.payload[0].tolist() == [0x05, 0x28, 0x84, 0x66, 0x6D, 0x00, 0x00, 0xA2]
    assert log.payload[2].tolist() == payload_row()
    assert log.payload[3].tolist() == payload_row(0xD8, 0x00, 0x8D)
    assert log.label.tolist() == [0, 0, 0, 0]
    assert log.ts[0] == pytest.approx(1479121434.850202)


@pytest.mark.parametrize("ids", [["1F4", "081", None], [0x1F4, 0x81, None]])
def test_parquet(tmp_path, ids):
    table = pa.table({"timestamp": [1.0, 2.0, 3.0], "arbitration_id": ids,
                      "data_field": ["0102", None, ""], "attack": [0, 1, 0]})
    pq.write_table(table.slice(0, 2), tmp_path / "good.parquet")
    log = read_can_log(tmp_path / "good.parquet")
    assert log.layout == "parquet"
    assert log.can_id.tolist() == [0x1F4, 0x81] and log.dlc.tolist() == [2, 0] and log.label.tolist() == [0, 1]
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(CanLogError, match=r"bad\.parquet: row 3: .*arbitration"):
        read_can_log(tmp_path / "bad.parquet")
    assert len(read_can_log(tmp_path / "bad.parquet", bad_rows="skip")) == 2
    assert read_can_log(tmp_path / "bad.parquet", limit_rows=1).can_id.tolist() == [0x1F4]


# -- bad input -----------------------------------------------------------------------------------

GOOD = "1.0,081,0102,0"


@pytest.mark.parametrize("bad,reason", [
    ("2.0,081,0102", "malformed row"),
    ("2.0,081,0102,0,9", "malformed row"),
    ("2.0,08G,0102,0", "not hexadecimal"),
    ("2.0,8 1,0102,0", "not hexadecimal"),
    ("2.0,123456789,0102,0", "longer than 8"),
    ("2.0,,0102,0", "empty arbitration_id"),
    ("2.0,081,01Z2,0", "not hexadecimal"),
    ("2.0,081,0é02,0", "not hexadecimal"),
    ("2.0,081,010,0", "odd number"),
    ("2.0,081,010203040506070809,0", "more than 8 bytes"),
    ("2.0,081,0102,2", "attack must be one of 0/1"),
    ("2.0,081,0102,", "attack must be one of 0/1"),
    ("abc,081,0102,0", "timestamp 'abc' is not a number"),
    ("nan,081,0102,0", "not a finite number"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad, reason):
    path = ctt(tmp_path, [GOOD, GOOD, bad, GOOD], name="capture.csv")
    with pytest.raises(CanLogError, match=rf"capture\.csv: line 4: .*{reason}"):
        read_can_log(path)
    log = read_can_log(path, bad_rows="skip")
    assert len(log) == 3 and log.bad_rows == 1


def test_first_of_several_problems_is_reported(tmp_path):
    path = ctt(tmp_path, [GOOD, "2,081,0102", GOOD, "3,XYZ,00,0", "4,081,00,7"], name="multi.csv.gz", gz=True)
    with pytest.raises(CanLogError, match=r"multi\.csv\.gz: line 3: malformed"):
        read_can_log(path)
    log = read_can_log(path, bad_rows="skip")
    assert log.bad_rows == 3 and log.ts.tolist() == [1.0, 1.0]


def test_value_error_line_counts_dropped_rows(tmp_path):
    # The malformed row (line 5) comes after the bad id (line 3); the bad id must still say line 3.
    path = ctt(tmp_path, [GOOD, "2,QQ,00,0", GOOD, "4,1,2"], name="order.csv")
    with pytest.raises(CanLogError, match=r"order\.csv: line 3: arbitration_id 'QQ'"):
        read_can_log(path)


def test_missing_column_names_file_columns_and_key(tmp_path):
    path = write(tmp_path / "cols.csv", "timestamp,arbitration_id,data_field\n1.0,081,00\n")
    with pytest.raises(CanLogError, match=r"cols\.csv: line 1: no label column .*set data\.columns\.label.*"
                                          r"columns are \['timestamp', 'arbitration_id', 'data_field'\]"):
        read_can_log(path)


def test_empty_files(tmp_path):
    with pytest.raises(CanLogError, match=r"zero\.csv: empty file"):
        read_can_log(write(tmp_path / "zero.csv", ""))
    with pytest.raises(CanLogError, match=r"zero\.csv\.gz: empty file"):
        read_can_log(write(tmp_path / "zero.csv.gz", "", gz=True))
    with pytest.raises(CanLogError, match=r"head\.csv: empty file"):
        read_can_log(write(tmp_path / "head.csv", CTT_HEADER))


def test_not_a_can_log(tmp_path):
    path = write(tmp_path / "notes.txt", "Dear diary,\ntoday I parsed a CSV.\n")
    with pytest.raises(CanLogError, match=r"notes\.txt: line 1: not a recognised CAN log"):
        read_can_log(path)
    binary = tmp_path / "blob.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CanLogError, match=r"blob\.csv: line 1"):
        read_can_log(binary)


@pytest.mark.parametrize("bad,reason", [
    ("1478198376.4,0316,8,05,21,68,09,21,21,00,R", "DLC 8 but 7"),
    ("1478198376.4,0316,2,05,21,X", "flag must be one of R/T"),
    ("1478198376.4,0316,2,05,2g,R", "two-digit hex"),
    ("1478198376.4,03Q6,2,05,21,R", "not hexadecimal"),
    ("1478198376.4,0316,9,05,21,R", "dlc must be one of"),
    ("1478198376.4", "malformed row"),
])
def test_car_hacking_bad_rows(tmp_path, bad, reason):
    good = "1478198376.389427,0316,2,05,21,R"
    path = write(tmp_path / "hack.csv", "\n".join([good, good, bad, good]) + "\n")
    with pytest.raises(CanLogError, match=rf"hack\.csv: line 3: .*{reason}"):
        read_can_log(path)
    assert read_can_log(path, bad_rows="skip").bad_rows == 1


def test_otids_bad_line(tmp_path):
    good = "Timestamp: 1479121434.850202        ID: 0350    000    DLC: 2    05 28"
    short = "Timestamp: 1479121434.850202        ID: 0350    000    DLC: 3    05 28"
    path = write(tmp_path / "short.txt", "\n".join([good, short]) + "\n")
    with pytest.raises(CanLogError, match=r"short\.txt: line 2: DLC 3 but 2 payload"):
        read_can_log(path)
    path = write(tmp_path / "otids.txt", "\n".join([good, "Timestamp: 1.0 garbage", good]) + "\n")
    with pytest.raises(CanLogError, match=r"otids\.txt: line 2: malformed line"):
        read_can_log(path)
    log = read_can_log(path, bad_rows="skip")
    assert len(log) == 2 and log.bad_rows == 1


def test_explicit_layout_mismatch_is_clear(tmp_path):
    path = ctt(tmp_path, [GOOD])
    with pytest.raises(CanLogError, match=r"log\.csv: line 1: timestamp .timestamp. is not a number"):
        read_can_log(path, layout="car_hacking_csv")


def test_skip_mode_all_bad_gives_empty_log(tmp_path):
    path = ctt(tmp_path, ["x,081,00,0", "1,ZZ,00,0"])
    log = read_can_log(path, bad_rows="skip")
    assert len(log) == 0 and log.bad_rows == 2 and log.payload.shape == (0, 8)


def test_invalid_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((CTT_HEADER + "1.0,081,00,0\n2.0,081,\xff\xfe,0\n").encode("latin-1"))
    with pytest.raises(CanLogError, match=r"latin1\.csv: .*UTF-8"):
        read_can_log(path)
    hack = tmp_path / "hack.csv"
    hack.write_bytes(b"1478198376.4,0316,2,05,21,R\n1478198376.5,0316,2,\xff5,21,R\n")
    with pytest.raises(CanLogError, match=r"hack\.csv: .*UTF-8"):
        read_can_log(hack)


# -- column names, id and label types (header CSV and Parquet) -----------------------------------

def write_parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_as_published_with_uint32_id_reads(tmp_path):
    # The public parquet copies: timestamp, id (uint32), data_field, label, plus source_file.
    path = write_parquet(tmp_path / "set_01.parquet", {
        "timestamp": pa.array([1.5, 2.5, 3.5]),
        "id": pa.array([0x1F4, 0x81, 0x1FFFFFFF], pa.uint32()),
        "data_field": ["0102", "", "FFEE"],
        "label": pa.array([0, 1, 0], pa.int8()),
        "source_file": ["a.csv", "a.csv", "b.csv"],
    })
    log = read_can_log(path)
    assert log.layout == "parquet" and log.bad_rows == 0
    assert log.can_id.dtype == np.uint32 and log.can_id.tolist() == [0x1F4, 0x81, 0x1FFFFFFF]
    assert log.dlc.tolist() == [2, 0, 2] and log.payload[2, :2].tolist() == [0xFF, 0xEE]
    assert log.label.tolist() == [0, 1, 0] and log.ts.tolist() == [1.5, 2.5, 3.5]


@pytest.mark.parametrize("id_type", [pa.int8(), pa.int16(), pa.int32(), pa.int64(),
                                     pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()])
def test_integer_ids_of_any_width_and_sign_read(tmp_path, id_type):
    path = write_parquet(tmp_path / "ids.parquet", {"ts": [1.0, 2.0], "can_id": pa.array([5, 127], id_type),
                                                    "data": ["00", "01"], "flag": [False, True]})
    log = read_can_log(path)
    assert log.can_id.tolist() == [5, 127] and log.label.tolist() == [0, 1]


@pytest.mark.parametrize("ids,reason", [
    (pa.array([5, -1, 7], pa.int64()), "row 2: id -1 is not a CAN id"),
    (pa.array([5, 1 << 32, 7], pa.int64()), f"row 2: id {1 << 32} is not a CAN id"),
    (pa.array([5, (1 << 64) - 1, 7], pa.uint64()), f"row 2: id {(1 << 64) - 1} is not a CAN id"),
    (pa.array([5, None, 7], pa.uint32()), "row 2: empty id"),
    (pa.array(["5", "-1", "7"]), "row 2: id '-1' is not hexadecimal"),
])
def test_ids_out_of_range_or_null_are_named_bad_rows(tmp_path, ids, reason):
    path = write_parquet(tmp_path / "ids.parquet", {"timestamp": [1.0, 2.0, 3.0], "id": ids,
                                                    "data_field": ["00"] * 3, "label": [0, 0, 1]})
    with pytest.raises(CanLogError, match=rf"ids\.parquet: {reason}"):
        read_can_log(path)
    log = read_can_log(path, bad_rows="skip")
    assert log.can_id.tolist() == [5, 7] and log.bad_rows == 1


@pytest.mark.parametrize("labels", [
    pa.array([False, True, False]), pa.array([0.0, 1.0, 0.0]), pa.array([0, 1, 0], pa.uint8()),
    pa.array(["0", "1", "0"]), pa.array(["R", "T", "r"]), pa.array(["normal", "Attack", "NORMAL"]),
    pa.array(["false", "TRUE", " False\t"]), pa.array(["0", "1", "0"]).dictionary_encode(),
])
def test_labels_as_numbers_booleans_and_words_read(tmp_path, labels):
    path = write_parquet(tmp_path / "labels.parquet", {"timestamp": [1.0, 2.0, 3.0], "id": ["1", "2", "3"],
                                                       "data_field": ["00"] * 3, "label": labels})
    assert read_can_log(path).label.tolist() == [0, 1, 0]
    csv = write(tmp_path / "labels.csv", "time,id,data,label\n" + "".join(
        f"{i}.0,{i},00,{value}\n" for i, value in enumerate(labels.to_pylist(), 1)))
    assert read_can_log(csv).label.tolist() == [0, 1, 0]


@pytest.mark.parametrize("labels,found", [
    (pa.array([0.0, 0.5, 1.0]), "0.5"), (pa.array([0, 2, 1]), "2"), (pa.array([False, None, True]), "None"),
    (pa.array(["0", "maybe", "1"]), "'maybe'"),
])
def test_labels_other_than_zero_one_are_named_bad_rows(tmp_path, labels, found):
    path = write_parquet(tmp_path / "labels.parquet", {"timestamp": [1.0, 2.0, 3.0], "id": ["1", "2", "3"],
                                                       "data_field": ["00"] * 3, "label": labels})
    with pytest.raises(CanLogError, match=rf"labels\.parquet: row 2: label must be one of 0/1.*found {found}"):
        read_can_log(path)


@pytest.mark.parametrize("header", [
    "ts,can_id,data,flag", " Timestamp , ID ,Data_Field,\tLabel", '"time","arbitration_id","payload","attack"',
    "source_file,timestamp,id,data_field,label",
])
def test_header_csv_recognises_common_column_names(tmp_path, header):
    fields = {"source_file": "x.csv", "timestamp": "1.5", "ts": "1.5", "time": "1.5", "id": "1F4", "can_id": "1F4",
              "arbitration_id": "1F4", "data_field": "0102", "data": "0102", "payload": "0102", "label": "1",
              "flag": "1", "attack": "1"}
    row = ",".join(fields[name.strip().strip('"').strip().lower()] for name in header.split(","))
    path = write(tmp_path / "named.csv", f"{header}\n{row}\n")
    assert detect_layout(path) == "can_train_and_test"
    log = read_can_log(path)
    assert log.ts.tolist() == [1.5] and log.can_id.tolist() == [0x1F4] and log.dlc.tolist() == [2]
    assert log.label.tolist() == [1]


def test_data_columns_mapping_reads_other_names(tmp_path):
    mapping = {"id": "can id", "label": "CLASS", "payload": "DATA"}
    csv = write(tmp_path / "other.csv", "Time,CAN ID,DLC,DATA,Class\n1.0,1F4,2,0102,Normal\n2.0,081,0,,Attack\n")
    parquet = write_parquet(tmp_path / "other.parquet", {
        "Time": [1.0, 2.0], "CAN ID": pa.array([0x1F4, 0x81], pa.uint16()), "DLC": [2, 0], "DATA": ["0102", ""],
        "Class": ["Normal", "Attack"]})
    for path in (csv, parquet):
        log = read_can_log(path, columns=mapping)
        assert log.can_id.tolist() == [0x1F4, 0x81] and log.dlc.tolist() == [2, 0] and log.label.tolist() == [0, 1]
        with pytest.raises(CanLogError, match=rf"{path.name}: .*no id column.*set data\.columns\.id.*"
                                              r"no label column.*set data\.columns\.label.*"
                                              r"columns are \['Time', 'CAN ID', 'DLC', 'DATA', 'Class'\]"):
            read_can_log(path)
        with pytest.raises(CanLogError, match=rf"{path.name}: .*data\.columns\.id='Ident' is not a column"):
            read_can_log(path, columns={**mapping, "id": "Ident"})


def test_duplicate_column_is_one_clear_error(tmp_path):
    path = write(tmp_path / "twice.csv", "timestamp,id,id,data_field,attack\n1.0,1,2,00,0\n")
    with pytest.raises(CanLogError, match=r"twice\.csv: line 1: column 'id' appears 2 times"):
        read_can_log(path)


@pytest.mark.parametrize("column,values,reason", [
    ("id", pa.array([1.0, 2.0]), "column 'id' \\(id\\) has type double; expected an integer or hex text"),
    ("data_field", pa.array([1, 2]), "column 'data_field' \\(payload\\) has type int64; expected hex text"),
    ("label", pa.array([[0], [1]]), "column 'label' \\(label\\) has type list<"),
    ("timestamp", pa.array([True, False]), "column 'timestamp' \\(timestamp\\) has type bool"),
])
def test_parquet_column_of_wrong_type_is_one_error(tmp_path, column, values, reason):
    columns = {"timestamp": [1.0, 2.0], "id": ["1", "2"], "data_field": ["00", "01"], "label": [0, 1]}
    path = write_parquet(tmp_path / "typed.parquet", {**columns, column: values})
    for mode in ("error", "skip"):
        with pytest.raises(CanLogError, match=rf"typed\.parquet: {reason}"):
            read_can_log(path, bad_rows=mode)


def test_parquet_timestamp_type_reads_as_seconds(tmp_path):
    stamps = pa.array([1_500_000_000_250_000, 1_500_000_001_000_000], pa.timestamp("us"))
    path = write_parquet(tmp_path / "ts.parquet", {"timestamp": stamps, "id": [1, 2], "data_field": ["", ""],
                                                   "label": [0, 0]})
    assert read_can_log(path).ts.tolist() == [1_500_000_000.25, 1_500_000_001.0]


# -- Car-Hacking padded rows -----------------------------------------------------------------------

def test_padded_car_hacking_rows_read_first_dlc_bytes(tmp_path):
    path = write(tmp_path / "DoS_dataset.csv", "\n".join([
        "1478198376.389427,0316,8,05,21,68,09,21,21,00,6f,R",
        "1478198376.389500,05f0,2,01,00,00,00,00,00,00,00,R",
        "1478198376.389600,05f0,0,00,00,00,00,00,00,00,00,T",
        "1478198376.389864,0260,2,19,21,R",
    ]) + "\n")
    for mode in ("error", "skip"):
        log = read_can_log(path, bad_rows=mode)
        assert len(log) == 4 and log.bad_rows == 0 and log.padded_rows == 2
        assert log.can_id.tolist() == [0x316, 0x5F0, 0x5F0, 0x260] and log.dlc.tolist() == [8, 2, 0, 2]
        assert log.payload[1].tolist() == payload_row(0x01, 0x00) and log.payload[2].tolist() == payload_row()
        assert log.label.tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize("bad,reason", [
    ("1478198376.5,05f0,2,01,02,00,00,00,00,00,ff,R", "DLC 2 but 8 payload byte.* not zero padding"),
    ("1478198376.5,05f0,2,01,00,00,00,00,R", "DLC 2 but 5 payload byte"),
    ("1478198376.5,05f0,8,01,02,R", "DLC 8 but 2 payload byte"),
    ("1478198376.5,05f0,2,01,00,00,00,00,00,00,00,00,R", "payload .* has more than 8 bytes"),
])
def test_padded_rows_that_are_not_zero_padding_stay_bad(tmp_path, bad, reason):
    good = "1478198376.4,05f0,2,01,00,00,00,00,00,00,00,R"
    path = write(tmp_path / "pad.csv", "\n".join([good, bad, good]) + "\n")
    with pytest.raises(CanLogError, match=rf"pad\.csv: line 2: {reason}"):
        read_can_log(path)
    log = read_can_log(path, bad_rows="skip")
    assert len(log) == 2 and log.bad_rows == 1 and log.padded_rows == 2


# -- whitespace inside fields, BOM, line endings, truncated gzip ---------------------------------

def test_whitespace_around_fields_is_ignored_in_every_layout(tmp_path):
    clean = read_can_log(ctt(tmp_path, ["1.0,081,0102,0", "2.0,1F4,,1"], name="clean.csv"))
    dirty = [
        ctt(tmp_path, ["1.0 ,\t081 ,0102\t,0", " 2.0, 1F4\t, \t, 1 "], name="dirty.csv"),
        write_parquet(tmp_path / "dirty.parquet", {"timestamp": [" 1.0", "2.0\t"], "id": [" 081", "1F4\r"],
                                                    "data_field": ["0102\t", " "], "label": ["0 ", "\t1"]}),
    ]
    for path in dirty:
        log = read_can_log(path)
        for col in ("ts", "can_id", "dlc", "payload", "label"):
            np.testing.assert_array_equal(getattr(log, col), getattr(clean, col), err_msg=f"{path.name}: {col}")
    hack = read_can_log(write(tmp_path / "hack.csv", "1478198376.4 ,\t0316 , 2 , 05 ,21\t, T \n"))
    assert hack.can_id.tolist() == [0x316] and hack.payload[0, :2].tolist() == [5, 0x21] and hack.label.tolist() == [1]
    otids = read_can_log(write(tmp_path / "o.txt", "Timestamp: 1.5\tID: 0350\t000\tDLC: 2\t05 28 \t\n"))
    assert otids.can_id.tolist() == [0x350] and otids.payload[0, :2].tolist() == [5, 0x28]


def test_bom_and_mixed_line_endings_read(tmp_path):
    text = (CTT_HEADER + "1.0,081,0102,0\r\n2.0,1F4,,1\r3.0,7DF,00,0\n").encode()
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text)
    assert detect_layout(path) == "can_train_and_test"
    assert read_can_log(path).can_id.tolist() == [0x81, 0x1F4, 0x7DF]
    hack = tmp_path / "bom_hack.csv"
    hack.write_bytes(b"\xef\xbb\xbf1478198376.4,0316,1,05,R\r\n1478198376.5,0316,1,06,T\r\n")
    assert read_can_log(hack).payload[:, 0].tolist() == [5, 6]


@pytest.mark.parametrize("rows", [10, 50_000])
def test_truncated_gzip_is_one_error_naming_the_file(tmp_path, rows):
    path = ctt(tmp_path, [f"{i}.0,{i % 0x7FF:03X},0102030405060708,0" for i in range(rows)], name="cut.csv.gz", gz=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CanLogError, match=r"cut\.csv\.gz: cannot read"):
        read_can_log(path)


# -- through the profile and the preprocess stage ------------------------------------------------

def tiny_dataset(root: Path, train: dict[str, bytes], test: dict[str, bytes]) -> Path:
    for folder, files in (("train_01", train), ("test_01_x", test)):
        (root / "ds" / folder).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (root / "ds" / folder / name).write_bytes(data)
    return root


def tiny_profile(tmp_path: Path, *overrides: str):
    from pipeline.config import load_profile

    return load_profile("local", [f"data_root={tmp_path / 'data'}", "data.dataset=ds",
                                  f"data.cache_dir={tmp_path / 'cache'}", "data.window=4", *overrides])


def test_data_columns_in_the_profile_reaches_the_reader_and_the_cache_key(tmp_path):
    from pipeline.can.data.build import preprocess

    rows = "".join(f"{i}.0,{0x100 + i % 3:X},0{i % 8}00,{'Attack' if i % 5 == 0 else 'Normal'}\n" for i in range(12))
    table = pa.table({"Time": [float(i) for i in range(8)], "CAN ID": pa.array([0x100 + i % 3 for i in range(8)],
                                                                               pa.uint32()),
                      "DATA": ["0102"] * 8, "Class": ["Normal"] * 7 + ["Attack"]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    tiny_dataset(tmp_path / "data", {"a.csv": ("Time,CAN ID,DATA,Class\n" + rows).encode()},
                 {"b.parquet": sink.getvalue().to_pybytes()})
    log = logging.getLogger("test.readers")
    with pytest.raises(CanLogError, match=r"a\.csv: line 1: no id column .*set data\.columns\.id"):
        preprocess(tiny_profile(tmp_path), log)
    profile = tiny_profile(tmp_path, "data.columns.id=CAN ID", "data.columns.label=class")
    summary = preprocess(profile, log)
    manifest = json.loads((Path(summary["cache_dir"]) / "manifest.json").read_text())
    assert manifest["params"]["columns"] == {"id": "CAN ID", "label": "class"}
    assert summary["graphs"]["train"] + summary["graphs"]["val"] == 3 and summary["graphs"]["test_01_x"] == 2
    other = preprocess(tiny_profile(tmp_path, "data.columns.id=can id", "data.columns.label=class"), log)
    assert other["cache_dir"] != summary["cache_dir"]  # the mapping is part of the cache key


@pytest.mark.parametrize("overrides,reason", [
    (["data.columns.kind=Class"], r"data\.columns\.kind: unknown key 'kind'; valid keys here: "
                                  r"\['id', 'label', 'payload', 'timestamp'\]"),
    (["data.columns.id=' '"], r"data\.columns\.id: must name a column"),
    (["data.columns.id=5"], r"data\.columns\.id: "),
    (["data.columns.id=Ident", "data.columns.label=ident"], r"data\.columns: .*\['ident'\] named for more than one"),
])
def test_data_columns_is_validated_when_the_profile_loads(tmp_path, overrides, reason):
    from pipeline.config import ProfileError

    tiny_dataset(tmp_path / "data", {}, {})
    with pytest.raises(ProfileError, match=reason):
        tiny_profile(tmp_path, *overrides)


def test_padded_rows_are_counted_in_the_manifest(tmp_path):
    from pipeline.can.data.build import preprocess

    rows = [f"1478198376.{i:06d},05f0,2,0{i % 8},00,00,00,00,00,00,00,R" if i % 3 == 0 else
            f"1478198376.{i:06d},0316,2,05,21,T" for i in range(12)]
    tiny_dataset(tmp_path / "data", {"DoS_dataset.csv": "\n".join(rows).encode() + b"\n"},
                 {"t.csv": "\n".join(rows[:8]).encode() + b"\n"})
    summary = preprocess(tiny_profile(tmp_path), logging.getLogger("test.readers"))
    manifest = json.loads((Path(summary["cache_dir"]) / "manifest.json").read_text())
    assert {s["path"]: s["padded_rows"] for s in manifest["sources"]} == {"train_01/DoS_dataset.csv": 4,
                                                                          "test_01_x/t.csv": 3}
    assert all(s["bad_rows"] == 0 for s in manifest["sources"])
