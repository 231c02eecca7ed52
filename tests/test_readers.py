"""Raw CAN readers: every layout, hex edge cases, and every kind of bad input named by file and line."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.readers import CanLogError, detect_layout, read_can_log

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
    ("2.0, 81,0102,0", "not hexadecimal"),
    ("2.0,123456789,0102,0", "longer than 8"),
    ("2.0,,0102,0", "empty arbitration id"),
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
    with pytest.raises(CanLogError, match=r"order\.csv: line 3: arbitration id 'QQ'"):
        read_can_log(path)


@pytest.mark.parametrize("header", ["timestamp,arbitration_id,data_field\n", "timestamp,id,data_field,attack\n"])
def test_missing_column(tmp_path, header):
    path = write(tmp_path / "cols.csv", header + "1.0,081,00\n")
    with pytest.raises(CanLogError, match=r"cols\.csv: line 1: missing column"):
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
