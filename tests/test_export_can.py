"""Export for CAN profiles: per-window VGAE latent statistics and GAT embeddings with provenance, as parquet."""
import json

import pyarrow.parquet as pq
import torch

from pipeline import io
from pipeline.can.data.cache import GraphSplit
from pipeline.runner import run_stage
from pipeline.train import load_model
from tests.kd_helpers import fresh_run


def test_export_writes_one_row_per_window_with_provenance_and_embeddings(tmp_path):
    run = fresh_run(tmp_path, ["stages=[preprocess,autoencoder,teacher,export]"])
    manifest_path = tmp_path / "cache" / "manifest.json"
    manifest = io.read_json(manifest_path)
    manifest["sources"] = [{"path": "train_01/a.csv"}]          # every synthetic window comes from source 0
    io.write_json(manifest_path, manifest)

    result = run_stage(run.path, "export")
    table = pq.read_table(result["embeddings"]).to_pandas()
    sizes = {name: s["graphs"] for name, s in manifest["splits"].items()}
    assert result["rows"] == sizes and len(table) == sum(sizes.values())
    vgae = load_model(run.done_record("autoencoder")["best_checkpoint"])
    gat = load_model(run.done_record("teacher")["best_checkpoint"])
    latent, width = vgae.latent_dim, gat.embedding_dim
    assert sum(c.startswith("vgae_mu_mean_") for c in table.columns) == latent
    assert sum(c.startswith("vgae_mu_std_") for c in table.columns) == latent
    assert sum(c.startswith("gat_") for c in table.columns) == width

    val = GraphSplit.open(tmp_path / "cache" / "val.pt")
    rows = table[table["split"] == "val"].sort_values("graph")
    assert rows["label"].tolist() == val.y.tolist() and rows["scenario"].isna().all()
    assert (rows["source_file"] == "train_01/a.csv").all()
    assert rows["start_row"].tolist() == val.t["start_row"].tolist()
    test_rows = table[table["split"] == "test_01_known"]
    assert (test_rows["scenario"] == "test_01_known").all()
    with torch.no_grad():
        batch = val.collate(torch.arange(len(val)))
        expected_gat = gat.embed(batch)
        expected_score = vgae.score(batch)
    got_gat = torch.tensor(rows[[f"gat_{i}" for i in range(width)]].to_numpy())
    assert torch.allclose(got_gat, expected_gat, atol=1e-4)
    assert torch.allclose(torch.tensor(rows["vgae_score"].to_numpy()), expected_score, atol=1e-4)
    summary = json.loads((run.path / "export" / "summary.json").read_text())
    assert summary["rows"] == sizes and set(summary["models"]) == {"vgae", "gat"}
    assert not list((run.path / "export").glob(".*.tmp"))    # written atomically, nothing left behind
