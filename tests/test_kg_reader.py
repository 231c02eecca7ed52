"""Edge-file readers: PrimeKG kg.csv and typed edge lists, and every kind of bad input named by file, line, column."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline.config import load_profile
from pipeline.kg.build import kg_preprocess
from pipeline.kg.reader import KGInputError, read_edges
from tests.kg_helpers import (
    FIXTURE,
    HEADER,
    primekg_row,
    single_thread,  # noqa: F401  (autouse fixture)
    write_primekg,
)

DRUG_A = (10, "DB1", "drug", "aspirin")
DRUG_B = (11, "DB2", "drug", "ibuprofen")
GENE = (20, "7", "gene/protein", "PTGS1")
DISEASE = (30, "7", "disease", "pain")   # same id as GENE: different nodes, different types


def test_reads_the_real_primekg_fixture():
    table = read_edges(FIXTURE)
    assert table.num_rows == 544
    assert table.num_nodes == 509
    assert {"drug", "gene/protein", "disease"} <= set(table.type_names)
    assert "drug_protein" in table.relation_names
    assert table.src.max() < table.num_nodes and table.dst.max() < table.num_nodes
    # every row's endpoints carry the type written in the file
    first = table.node_type[table.src[0]]
    assert table.type_names[first] == "drug"


def test_primekg_ids_names_and_types(tmp_path):
    path = write_primekg(tmp_path / "kg.csv", [
        primekg_row("drug_protein", DRUG_A, GENE),
        primekg_row("drug_protein", GENE, DRUG_A),
        primekg_row("indication", DRUG_B, DISEASE),
        primekg_row("drug_drug", DRUG_A, DRUG_B),
    ])
    table = read_edges(path)
    assert table.num_nodes == 4
    names = dict(zip(table.node_id.to_pylist(), table.node_name.to_pylist()))
    assert names["DB1"] == "aspirin"
    types = [table.type_names[t] for t in table.node_type]
    ids = table.node_id.to_pylist()
    assert sorted(zip(ids, types)) == [("7", "disease"), ("7", "gene/protein"), ("DB1", "drug"), ("DB2", "drug")]
    # row 2 is row 1 reversed: same two node indices, swapped
    assert (table.src[1], table.dst[1]) == (table.dst[0], table.src[0])


def test_edge_list_csv_and_tsv_give_the_same_graph(tmp_path):
    rows = [("paper", "0", "writes", "author", "0"), ("paper", "0", "writes", "author", "5"),
            ("paper", "1", "about", "subject", "0"), ("paper", "1", "writes", "author", "0")]
    header = ("src_type", "src_id", "relation", "dst_type", "dst_id")
    csv = tmp_path / "edges.csv"
    tsv = tmp_path / "edges.tsv"
    csv.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    tsv.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    a, b = read_edges(csv), read_edges(tsv)
    assert a.num_nodes == b.num_nodes == 5  # paper 0/1, author 0/5, subject 0: ids repeat across types
    assert np.array_equal(a.src, b.src) and np.array_equal(a.dst, b.dst)
    assert sorted(a.relation_names) == ["about", "writes"]


def test_limit_rows_and_include_node_types(tmp_path):
    path = write_primekg(tmp_path / "kg.csv", [
        primekg_row("drug_protein", DRUG_A, GENE),
        primekg_row("indication", DRUG_B, DISEASE),
        primekg_row("drug_drug", DRUG_A, DRUG_B),
    ])
    assert read_edges(path, limit_rows=2).num_rows == 2
    only_drugs = read_edges(path, include_node_types=["drug"])
    assert only_drugs.num_rows == 1 and only_drugs.num_nodes == 2
    with pytest.raises(KGInputError, match="does not have.*'pathway'|'pathway'.*does not have"):
        read_edges(path, include_node_types=["drug", "pathway"])


# -- bad input -------------------------------------------------------------------------------------

def test_missing_column_names_file_line_and_column(tmp_path):
    path = tmp_path / "kg.csv"
    path.write_text(HEADER.replace(",y_type", "") + "\n")
    with pytest.raises(KGInputError) as err:
        read_edges(path)
    msg = str(err.value)
    assert str(path) in msg and "line 1" in msg and "y_type" in msg


def test_type_conflict_names_both_rows(tmp_path):
    path = write_primekg(tmp_path / "kg.csv", [
        primekg_row("drug_protein", DRUG_A, GENE),
        primekg_row("drug_drug", DRUG_B, DRUG_A),
        primekg_row("disease_protein", (10, "DB1", "disease", "aspirin?"), GENE),
    ])
    with pytest.raises(KGInputError) as err:
        read_edges(path)
    msg = str(err.value)
    assert str(path) in msg and "line 4" in msg and "'x_type'" in msg and "line 2" in msg
    assert "'disease'" in msg and "'drug'" in msg


@pytest.mark.parametrize("content, expect", [
    ("", "line 1: the file is empty"),
    (HEADER + "\n", "line 2: no edge rows"),
])
def test_empty_files(tmp_path, content, expect):
    path = tmp_path / "kg.csv"
    path.write_text(content)
    with pytest.raises(KGInputError, match=expect) as err:
        read_edges(path)
    assert str(path) in str(err.value)


def test_wrong_field_count_names_the_line(tmp_path):
    good = primekg_row("drug_drug", DRUG_A, DRUG_B)
    path = write_primekg(tmp_path / "kg.csv", [good, good, "drug_drug,x,1,2"])
    with pytest.raises(KGInputError, match=r"line 4: expected 12 fields, got 4"):
        read_edges(path)


def test_bad_values_name_line_and_column(tmp_path):
    good = primekg_row("drug_drug", DRUG_A, DRUG_B)
    path = write_primekg(tmp_path / "kg.csv", [good, primekg_row("drug_drug", DRUG_A, (12, "DB3", "", "x"))])
    with pytest.raises(KGInputError, match=r"line 3, column 'y_type': empty value"):
        read_edges(path)
    path = write_primekg(tmp_path / "kg2.csv", [good, primekg_row("drug_drug", ("1a", "DB9", "drug", "x"), DRUG_B)])
    with pytest.raises(KGInputError, match=r"line 3, column 'x_index': not an integer"):
        read_edges(path)


def test_bad_input_leaves_no_cache(tmp_path):
    data = tmp_path / "data" / "kg"
    data.mkdir(parents=True)
    write_primekg(data / "kg.csv", [primekg_row("drug_drug", DRUG_A, DRUG_B), "drug_drug,1"])
    cache = tmp_path / "cache"
    profile = load_profile("primekg", [f"data_root={tmp_path / 'data'}", "data.dataset=kg", "kg.file=kg.csv",
                                       f"data.cache_dir={cache}"])
    with pytest.raises(KGInputError, match="line 3"):
        kg_preprocess(profile, logging.getLogger("test"))
    assert not cache.exists() or list(cache.iterdir()) == []
