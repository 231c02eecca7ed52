"""Export stage: per-window embeddings of every split, as parquet, for fusion or analysis downstream.

For CAN profiles each window graph of every split (train, val and each test scenario) becomes one
row of ``export/embeddings.parquet``:

    split, scenario, source_file, start_row, graph, label   where the window comes from, its label
    vgae_score                                               the autoencoder's reconstruction error
    vgae_mu_mean_<i>, vgae_mu_std_<i>                        mean and std over nodes of the VGAE latent means
    gat_<i>                                                  the GAT teacher's pooled (mean|max) embedding

The models run in chunks planned from the memory budget; each chunk is appended to the file as a
row group, so memory holds one chunk at a time. The file is written under a temporary name and
renamed when complete. ``export/summary.json`` lists the columns and rows per split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from pipeline import io
from pipeline.can.data.cache import GraphBatch, GraphSplit, open_split
from pipeline.can.inference import densest, plan_inference, run_chunked
from pipeline.train import configure_threads, load_model

EMBEDDINGS = "embeddings.parquet"


def run(ctx) -> dict[str, Any]:
    return export_can(ctx)


class EmbeddingModels(nn.Module):
    """The models whose outputs make up a row (either may be absent from the chain)."""

    def __init__(self, vgae: nn.Module | None, gat: nn.Module | None):
        super().__init__()
        self.vgae = vgae
        self.gat = gat


def embed(models: EmbeddingModels, batch: GraphBatch) -> dict[str, torch.Tensor]:
    """Per-graph outputs of one chunk (an inference ``Forward``)."""
    out: dict[str, torch.Tensor] = {}
    if models.vgae is not None:
        out["vgae_score"] = models.vgae.score(batch)
        out["vgae_latent"] = models.vgae.latent_stats(batch)
    if models.gat is not None:
        out["gat"] = models.gat.embed(batch)
    return out


def export_can(ctx) -> dict[str, Any]:
    cache_dir = Path(ctx.upstream["preprocess"]["cache_dir"])
    manifest = io.read_json(cache_dir / "manifest.json")
    configure_threads(ctx.profile.train.threads)
    device = ctx.device
    models = load_models(ctx.upstream, device)
    sources = source_names(manifest)
    split_names = ["train", "val", *manifest["scenarios"]]
    out_path = ctx.dir / EMBEDDINGS
    counts: dict[str, int] = {}
    schema: pa.Schema | None = None
    splits = {name: open_split(cache_dir, manifest, name) for name in split_names}
    # One plan for every split: measured on train, with the node budget bounded by the densest graph anywhere.
    plan = plan_inference(models, splits["train"], embed, device, ctx.profile.safety_factor,
                          max_graphs=ctx.profile.train.batch_size * 4,
                          edges_per_node=max(densest(s) for s in splits.values()), log=ctx.log.info)
    with io.atomic_path(out_path) as tmp:
        writer: pq.ParquetWriter | None = None
        try:
            for name, split in splits.items():
                counts[name] = 0
                for index, out in run_chunked(models, embed, split, plan, device):
                    table = chunk_table(name, manifest, split, sources, index, out)
                    if writer is None:
                        schema = table.schema
                        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                    writer.write_table(table)
                    counts[name] += table.num_rows
                ctx.log.info("export: %s: %d windows", name, counts[name])
        finally:
            if writer is not None:
                writer.close()
    columns = schema.names if schema is not None else []
    summary = {"path": str(out_path), "rows": counts, "columns": columns,
               "models": {k: ctx.upstream[s]["best_checkpoint"] for k, s in (("vgae", "autoencoder"), ("gat", "teacher"))
                          if s in ctx.upstream}}
    io.write_json(ctx.dir / "summary.json", summary)
    return {"embeddings": str(out_path), "rows": counts, "columns": len(columns)}


def load_models(upstream: dict[str, dict[str, Any]], device: torch.device) -> EmbeddingModels:
    vgae = load_model(upstream["autoencoder"]["best_checkpoint"], device) if "autoencoder" in upstream else None
    gat = load_model(upstream["teacher"]["best_checkpoint"], device) if "teacher" in upstream else None
    if vgae is None and gat is None:
        raise ValueError("export needs the autoencoder or the teacher stage in the chain (profile `stages`)")
    return EmbeddingModels(vgae, gat).to(device).eval()


def source_names(manifest: dict[str, Any]) -> np.ndarray:
    """Raw file of each source index, as the manifest lists them (None where it does not)."""
    return np.array([s.get("path") for s in manifest.get("sources", [])] + [None], dtype=object)


def chunk_table(split_name: str, manifest: dict[str, Any], split: GraphSplit, sources: np.ndarray,
                index: torch.Tensor, out: dict[str, torch.Tensor]) -> pa.Table:
    """One chunk's rows: provenance and label columns, then the embedding columns."""
    idx = index.numpy()
    n = idx.size
    scenario = split_name if split_name in manifest["scenarios"] else None
    columns: dict[str, pa.Array] = {
        "split": pa.array([split_name] * n, pa.string()),
        "scenario": pa.array([scenario] * n, pa.string()),
        "source_file": pa.array(sources[np.minimum(split.t["source"].numpy()[idx], sources.size - 1)], pa.string()),
        "start_row": pa.array(split.t["start_row"].numpy()[idx], pa.int64()),
        "graph": pa.array(idx, pa.int64()),
        "label": pa.array(split.y.numpy()[idx], pa.int8()),
    }
    if "vgae_score" in out:
        columns["vgae_score"] = pa.array(out["vgae_score"].numpy(), pa.float32())
        latent = out["vgae_latent"].numpy()
        half = latent.shape[1] // 2
        columns.update(_wide("vgae_mu_mean", latent[:, :half]))
        columns.update(_wide("vgae_mu_std", latent[:, half:]))
    if "gat" in out:
        columns.update(_wide("gat", out["gat"].numpy()))
    return pa.table(columns)


def _wide(prefix: str, values: np.ndarray) -> dict[str, pa.Array]:
    values = values.astype(np.float32, copy=False)
    return {f"{prefix}_{i}": pa.array(values[:, i]) for i in range(values.shape[1])}
