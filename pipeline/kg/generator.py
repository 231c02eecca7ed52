"""Synthetic PrimeKG-shaped graphs at any scale, for benchmarks and memory tests.

SYNTHETIC DATA: nothing here is biomedical knowledge. The generator reproduces the shape of
PrimeKG's kg.csv: its 10 node types in their published proportions (129,375 nodes at
``scale=1``), its 30 relations between the same type pairs with their row counts (~8.1M rows,
each undirected edge written in both directions as PrimeKG does) and a heavy-tailed degree
distribution: each node type gets Zipf-like weights ``(rank + 1) ** -exponent`` over a random
permutation of its nodes, and both endpoints of an edge are drawn from those weights, so hub
proteins, for example, are hubs in every relation that touches proteins, as in PrimeKG.

Everything is vectorized (inverse-CDF sampling with ``searchsorted``, dedup with ``unique``), so
the full-scale graph is generated in seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from pipeline import io
from pipeline.kg.reader import PRIMEKG_COLUMNS, EdgeTable

PRIMEKG_NODE_TYPES: dict[str, int] = {
    "gene/protein": 27_671, "drug": 7_957, "effect/phenotype": 15_311, "disease": 17_080,
    "biological_process": 28_642, "molecular_function": 11_169, "cellular_component": 4_176,
    "exposure": 818, "pathway": 2_516, "anatomy": 14_035,
}
"""Published node counts per type (129,375 in all)."""

PRIMEKG_RELATIONS: list[tuple[str, str, str, str, int]] = [
    # relation, display_relation, x_type, y_type, rows in kg.csv (both directions)
    ("anatomy_protein_present", "expression present", "anatomy", "gene/protein", 3_036_406),
    ("drug_drug", "synergistic interaction", "drug", "drug", 2_672_628),
    ("protein_protein", "ppi", "gene/protein", "gene/protein", 642_150),
    ("disease_phenotype_positive", "phenotype present", "disease", "effect/phenotype", 300_634),
    ("bioprocess_protein", "interacts with", "biological_process", "gene/protein", 289_610),
    ("cellcomp_protein", "interacts with", "cellular_component", "gene/protein", 166_804),
    ("disease_protein", "associated with", "disease", "gene/protein", 160_822),
    ("molfunc_protein", "interacts with", "molecular_function", "gene/protein", 139_060),
    ("drug_effect", "side effect", "drug", "effect/phenotype", 129_568),
    ("bioprocess_bioprocess", "parent-child", "biological_process", "biological_process", 105_772),
    ("pathway_protein", "interacts with", "pathway", "gene/protein", 85_292),
    ("disease_disease", "parent-child", "disease", "disease", 64_388),
    ("contraindication", "contraindication", "drug", "disease", 61_350),
    ("drug_protein", "target", "drug", "gene/protein", 51_306),
    ("anatomy_protein_absent", "expression absent", "anatomy", "gene/protein", 39_774),
    ("phenotype_phenotype", "parent-child", "effect/phenotype", "effect/phenotype", 37_472),
    ("anatomy_anatomy", "parent-child", "anatomy", "anatomy", 28_064),
    ("molfunc_molfunc", "parent-child", "molecular_function", "molecular_function", 27_148),
    ("indication", "indication", "drug", "disease", 18_776),
    ("cellcomp_cellcomp", "parent-child", "cellular_component", "cellular_component", 9_690),
    ("phenotype_protein", "associated with", "effect/phenotype", "gene/protein", 6_660),
    ("off-label use", "off-label use", "drug", "disease", 5_136),
    ("pathway_pathway", "parent-child", "pathway", "pathway", 5_070),
    ("exposure_disease", "linked to", "exposure", "disease", 4_608),
    ("exposure_exposure", "parent-child", "exposure", "exposure", 4_140),
    ("exposure_bioprocess", "interacts with", "exposure", "biological_process", 3_250),
    ("exposure_protein", "interacts with", "exposure", "gene/protein", 2_424),
    ("disease_phenotype_negative", "phenotype absent", "disease", "effect/phenotype", 2_483),
    ("exposure_molfunc", "interacts with", "exposure", "molecular_function", 45),
    ("exposure_cellcomp", "interacts with", "exposure", "cellular_component", 20),
]
"""Relations between the published type pairs with their approximate row counts (~8.1M rows)."""

DEGREE_EXPONENT = 0.75
"""Zipf exponent of the per-type node weights; larger gives heavier hubs."""


def generate_primekg_like(scale: float = 1.0, seed: int = 0, exponent: float = DEGREE_EXPONENT) -> EdgeTable:
    """A synthetic graph with PrimeKG's type/relation proportions, ``scale`` x its size.

    Rows come in both directions like kg.csv; duplicates and self-loops are never generated.
    A relation may come out smaller than asked when its two types are too small to hold that
    many distinct pairs (tiny scales).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    rng = np.random.default_rng(seed)
    type_names = list(PRIMEKG_NODE_TYPES)
    counts = np.array([max(2, round(c * scale)) for c in PRIMEKG_NODE_TYPES.values()], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cdfs = [_zipf_cdf(int(n), exponent, rng) for n in counts]

    src_parts, dst_parts, rel_parts = [], [], []
    for r, (_, _, x_type, y_type, rows) in enumerate(PRIMEKG_RELATIONS):
        a, b = type_names.index(x_type), type_names.index(y_type)
        u, v = _distinct_pairs(cdfs[a], cdfs[b], max(1, round(rows * scale / 2)), a == b, rng)
        u, v = u + start[a], v + start[b]
        src_parts += [u, v]
        dst_parts += [v, u]
        rel_parts.append(np.full(2 * u.shape[0], r, dtype=np.int32))
    src, dst = np.concatenate(src_parts), np.concatenate(dst_parts)
    # Interleave the two directions of each pair the way rows would sit in a file: shuffle rows.
    order = rng.permutation(src.shape[0])
    node_type = np.repeat(np.arange(len(type_names), dtype=np.int32), counts)
    local = np.arange(int(counts.sum())) - np.repeat(start, counts)
    node_id = pa.array(local.astype(str))
    node_name = pa.array(np.char.add(np.char.add(np.array(type_names)[node_type], " "), local.astype(str)))
    return EdgeTable(source=f"synthetic PrimeKG-shaped graph (scale={scale}, seed={seed}, exponent={exponent})",
                     type_names=type_names, relation_names=[r[0] for r in PRIMEKG_RELATIONS],
                     node_type=node_type, node_id=node_id, node_name=node_name,
                     src=src[order], dst=dst[order], relation=np.concatenate(rel_parts)[order])


def _zipf_cdf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Cumulative weights over ``n`` nodes; hub ranks are a random permutation, not node order."""
    weights = (rng.permutation(n) + 1.0) ** -exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _distinct_pairs(cdf_a: np.ndarray, cdf_b: np.ndarray, want: int, same_type: bool,
                    rng: np.random.Generator, rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``want`` distinct pairs drawn from the two weightings (unordered, no loops, when same type)."""
    n_b = cdf_b.shape[0]
    keys = np.zeros(0, dtype=np.int64)
    for _ in range(rounds):
        need = want - keys.shape[0]
        if need <= 0:
            break
        draw = int(need * 1.3) + 16
        u = np.searchsorted(cdf_a, rng.random(draw), side="right").clip(max=cdf_a.shape[0] - 1)
        v = np.searchsorted(cdf_b, rng.random(draw), side="right").clip(max=n_b - 1)
        if same_type:
            u, v = np.minimum(u, v), np.maximum(u, v)
            keep = u != v
            u, v = u[keep], v[keep]
        new = u.astype(np.int64) * n_b + v
        # keep the first occurrence order (unique sorts; a random subset of the sorted keys would bias)
        merged = np.concatenate([keys, new])
        _, first = np.unique(merged, return_index=True)
        keys = merged[np.sort(first)]
    keys = keys[:want]
    return keys // n_b, keys % n_b


def write_primekg_csv(table: EdgeTable, path: str | Path) -> Path:
    """Write ``table`` in PrimeKG's 12-column kg.csv layout (x_index = the node index), atomically."""
    path = Path(path)
    types = pa.array(table.type_names)
    rel = pa.array(table.relation_names)
    src, dst = pa.array(table.src), pa.array(table.dst)
    node_type = pa.array(table.node_type)
    empty = pa.array([""] * table.num_rows) if table.num_rows < 1 << 20 else pa.nulls(table.num_rows, pa.string())
    columns = {
        "relation": rel.take(pa.array(table.relation)), "display_relation": rel.take(pa.array(table.relation)),
        "x_index": src, "x_id": table.node_id.take(src), "x_type": types.take(node_type.take(src)),
        "x_name": table.node_name.take(src), "x_source": empty,
        "y_index": dst, "y_id": table.node_id.take(dst), "y_type": types.take(node_type.take(dst)),
        "y_name": table.node_name.take(dst), "y_source": empty,
    }
    out = pa.table({name: columns[name] for name in PRIMEKG_COLUMNS})
    with io.atomic_path(path) as tmp:
        pcsv.write_csv(out, tmp)
    return path
