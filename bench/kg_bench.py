"""Knowledge-graph benchmarks on a SYNTHETIC PrimeKG-shaped graph (``pipeline.kg.generator``).

At full scale the graph has PrimeKG's 129,375 nodes of 10 types and ~8.1M edge rows of 30
relations, with a heavy-tailed degree distribution; nothing in it is real biomedical data. The
cache is built once into bench/results/cache/ and reused.

* ``kg_sampled_training``: the teacher stage's training path (default HGT: 256 hidden, 512 out,
  8 heads, 2 layers; the memory plan for a 4 GB budget; pure-torch sampler) for ``TRAIN_STEPS``
  steps after a warm-up, in a fresh process: peak RSS of that process, seconds per 1,000 steps,
  and the activation bytes of one step per message edge it processes.
* ``kg_export``: the export stage's work for the trained model, in a fresh process: layer-wise
  inference over every node twice (training graph for the link report, every edge for the
  files), parquet + CSV written, the report: peak RSS and seconds.
* ``kg_full_batch``: the same HGT, forward + backward on the whole graph at once, on growing
  scales of the generator until its process passes ``FULL_BATCH_CAP_GB`` (killed there, so the
  shared machine is never pushed into swap): the largest scale that fits in the training budget,
  and the ratio of activation bytes per processed edge, full-batch over sampled.

Each measurement runs in its own interpreter (``python -m bench.kg_bench <mode> <json>``), so
peak RSS is that of the measured path alone. Threads: ``BENCH_THREADS`` (2, the machine's cores).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CACHE_ROOT = RESULTS / "cache"
MODEL_PATH = RESULTS / "kg-bench-teacher.pt"
SCALE = 1.0
SEED = 0
TRAIN_STEPS = int(os.environ.get("KG_BENCH_STEPS", "20"))
TRAIN_SECONDS = float(os.environ.get("KG_BENCH_SECONDS", "180"))
"""Timed steps stop at TRAIN_STEPS or once this much wall time is spent (at least MIN_STEPS):
a full-scale step takes seconds, and on a loaded 2-core machine far more."""
MIN_STEPS = 3
WARMUP_STEPS = 2
FANOUTS = [5, 3]
MAX_SEED_EDGES = 1024
TRAIN_TARGET_GB = 4.0
EXPORT_TARGET_GB = 6.0
FULL_BATCH_CAP_GB = 6.0
FULL_BATCH_SCALES = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
BENCH_THREADS = int(os.environ.get("KG_BENCH_THREADS", "2"))
GiB = 2**30


def row(benchmark: str, metric: str, value: float, target: str | None = None, ok: bool | None = None) -> dict[str, Any]:
    return {"benchmark": benchmark, "metric": metric, "value": value, "target": target, "ok": ok}


# -- the graph -------------------------------------------------------------------------------------

def synthetic_cache(scale: float = SCALE, seed: int = SEED, root: Path = CACHE_ROOT) -> Path:
    """The generator's graph at ``scale`` as a cache (built once; same cache layout as preprocess)."""
    from pipeline import io
    from pipeline.kg.cache import CacheParams, build_cache, cache_key
    from pipeline.kg.generator import generate_primekg_like

    params = CacheParams()
    source = {"generator": "primekg-like", "scale": scale, "seed": seed}
    key = cache_key(source, params.as_dict())
    path = root / f"kg-synthetic-{key}"
    if io.keyed_manifest(path, key) is None:
        build_cache(generate_primekg_like(scale, seed=seed), params, path, key, source)
    return path


def _teacher(graph):
    from pipeline.kg.config import KGNetConfig
    from pipeline.kg.training import build_encoder

    return build_encoder(KGNetConfig(), graph)


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB


# -- child processes ---------------------------------------------------------------------------------

def child_train(args: dict[str, Any]) -> dict[str, Any]:
    """Plan, then time sampled training steps exactly as the teacher stage runs them."""
    import torch

    from pipeline.kg.cache import KGGraph
    from pipeline.kg.loss import link_loss
    from pipeline.kg.plan import kg_plan_key, plan_kg_batches
    from pipeline.kg.sampler import LinkBatchLoader
    from pipeline.memory import measure_step_peak

    torch.manual_seed(0)
    graph = KGGraph.open(args["cache"])
    model = _teacher(graph)
    loader = LinkBatchLoader(graph, MAX_SEED_EDGES, FANOUTS, neg_ratio=1, seed=0, sampler="torch")
    loss_fn = link_loss()
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        key = kg_plan_key(model, graph, loader, cpu, 0.9, MAX_SEED_EDGES, target_gb=TRAIN_TARGET_GB)
        started = time.perf_counter()
        _, plan = plan_kg_batches(model, loader, loss_fn, cpu, 0.9, MAX_SEED_EDGES, Path(tmp) / "plan.json", key,
                                  target_gb=TRAIN_TARGET_GB, log=lambda m: print(m, file=sys.stderr))
        plan_s = time.perf_counter() - started
    loader.max_nodes = plan.seed_edges
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loader.set_epoch(1)
    batches = iter(loader)
    edges, nodes, seconds, cpu_seconds = [], [], 0.0, 0.0
    for step in range(WARMUP_STEPS + TRAIN_STEPS):
        began, began_cpu = time.perf_counter(), time.process_time()
        batch = next(batches)
        loss, _ = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        took = time.perf_counter() - began
        print(f"step {step + 1}: {took:.1f}s, {batch.num_nodes} nodes, {batch.num_edges} edges, "
              f"RSS peak {_peak_gb():.2f} GB", file=sys.stderr, flush=True)
        if step >= WARMUP_STEPS:
            seconds += took
            cpu_seconds += time.process_time() - began_cpu
            edges.append(batch.num_edges)
            nodes.append(batch.num_nodes)
            if len(edges) >= MIN_STEPS and seconds >= TRAIN_SECONDS:
                break
    # activation bytes of one representative step (live tensors, as the planner measures them)
    batch = next(batches)

    def one_step():
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch)[0].backward()

    act = measure_step_peak(one_step, cpu)
    torch.save({"model_class": "pipeline.kg.models.hgt:HGT", "model_kwargs": model.model_kwargs,
                "state_dict": model.state_dict()}, args["model"])
    return {"peak_rss_gb": _peak_gb(), "seconds_per_1000_steps": seconds / len(edges) * 1000,
            "cpu_seconds_per_1000_steps": cpu_seconds / len(edges) * 1000, "steps": len(edges),
            "load_average": os.getloadavg()[0], "plan_seconds": plan_s, "seed_edges": plan.seed_edges, "plan_reason": plan.reason,
            "predicted_activation_gb": plan.predicted_bytes / GiB, "mean_batch_edges": sum(edges) / len(edges),
            "mean_batch_nodes": sum(nodes) / len(nodes), "step_activation_bytes": act,
            "step_edges": batch.num_edges, "graph_nodes": sum(graph.num_nodes.values()),
            "graph_rows": graph.manifest["dropped"]["rows_read"], "message_edges": sum(c.numel() for _, c in graph.csc.values())}


def child_export(args: dict[str, Any]) -> dict[str, Any]:
    """Layer-wise inference of the trained model, files and report, as the export stage runs them."""
    from pipeline.config import load_profile
    from pipeline.kg.cache import SPLITS, KGGraph
    from pipeline.kg.embeddings import export_model
    from pipeline.train import load_model

    graph = KGGraph.open(args["cache"])
    model = load_model(args["model"])
    profile = load_profile("primekg", check_paths=False)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        report = export_model(profile, graph, graph.with_edges(SPLITS), model, "teacher", out)
        sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    return {"peak_rss_gb": _peak_gb(), "seconds": time.perf_counter() - started,
            "inference_seconds": report["inference_seconds"],
            "csv_gb": sizes["embeddings.csv"] / GiB, "parquet_gb": sizes["embeddings.parquet"] / GiB,
            "mean_cosine": report["geometry"]["mean_cosine"], "pca_components_90": report["geometry"]["pca_components_90"]}


def child_full(args: dict[str, Any]) -> dict[str, Any]:
    """Forward + backward of the HGT on a whole generated graph at ``scale``."""
    import torch

    from pipeline.kg.cache import KGGraph
    from pipeline.kg.loss import link_bce
    from pipeline.kg.sampler import KGBatch
    from pipeline.memory import measure_step_peak

    with tempfile.TemporaryDirectory() as tmp:
        graph = KGGraph.open(synthetic_cache(args["scale"], root=Path(tmp)))
        torch.manual_seed(0)
        model = _teacher(graph)
        n_id = {t: torch.arange(n) for t, n in graph.num_nodes.items()}
        edges = {mt: torch.stack([col, torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())])
                 for mt, (ptr, col) in graph.csc.items()}
        batch = KGBatch(n_id, edges, [])
        num_edges = batch.num_edges

        def step():
            model.zero_grad(set_to_none=True)
            emb = model(batch)
            e = graph.edges(0, "train")
            t = graph.edge_types[0]
            pos = model.score(0, emb[t["src_alias"]][e[0]], emb[t["dst_alias"]][e[1]])
            link_bce(pos, pos[:0]).backward()

        started = time.perf_counter()
        act = measure_step_peak(step, torch.device("cpu"))
        return {"peak_rss_gb": _peak_gb(), "seconds": time.perf_counter() - started, "scale": args["scale"],
                "nodes": sum(graph.num_nodes.values()), "message_edges": num_edges, "activation_bytes": act}


def _run_child(mode: str, args: dict[str, Any], cap_gb: float | None = None) -> dict[str, Any] | None:
    """Run a measurement in a fresh interpreter; None if it died or passed ``cap_gb`` (then killed)."""
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": str(BENCH_THREADS), "MKL_NUM_THREADS": str(BENCH_THREADS),
           "OPENBLAS_NUM_THREADS": str(BENCH_THREADS)}
    proc = subprocess.Popen([sys.executable, "-m", "bench.kg_bench", mode, json.dumps(args)], stdout=subprocess.PIPE,
                            env=env, cwd=Path(__file__).resolve().parents[1], text=True)
    watched = psutil.Process(proc.pid)
    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss / GiB)
        except psutil.NoSuchProcess:
            break
        if cap_gb is not None and peak > cap_gb:
            proc.kill()
            proc.wait()
            return None
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        return None
    return json.loads(out.strip().splitlines()[-1])


# -- benchmarks ----------------------------------------------------------------------------------

_TRAIN: dict[str, Any] = {}


def _train_result() -> dict[str, Any]:
    if not _TRAIN:
        cache = synthetic_cache()
        result = _run_child("train", {"cache": str(cache), "model": str(MODEL_PATH)})
        if result is None:
            raise RuntimeError("the sampled-training benchmark process failed (see its stderr above)")
        _TRAIN.update(result)
    return _TRAIN


def kg_sampled_training() -> list[dict[str, Any]]:
    r = _train_result()
    name = "kg_sampled_training"
    return [
        row(name, f"graph: nodes / kg.csv rows (synthetic, scale {SCALE})", f"{r['graph_nodes']:,} / {r['graph_rows']:,}"),
        row(name, "peak RSS of training (GB)", round(r["peak_rss_gb"], 3), f"< {TRAIN_TARGET_GB}",
            r["peak_rss_gb"] < TRAIN_TARGET_GB),
        row(name, f"seconds per 1,000 steps ({BENCH_THREADS} threads, {r['steps']} steps timed, wall)",
            round(r["seconds_per_1000_steps"], 1)),
        row(name, "CPU seconds per 1,000 steps (all threads; less sensitive to other load)",
            round(r["cpu_seconds_per_1000_steps"], 1)),
        row(name, f"machine load average after the timed steps ({os.cpu_count()} cores; other jobs included)",
            round(r["load_average"], 2)),
        row(name, "planned seed edges per step", r["seed_edges"], None, None),
        row(name, "seconds to plan (8 measured probe steps)", round(r["plan_seconds"], 1)),
        row(name, "mean sampled nodes / message edges per step",
            f"{r['mean_batch_nodes']:,.0f} / {r['mean_batch_edges']:,.0f}"),
        row(name, "activation bytes per processed edge (sampled step)",
            round(r["step_activation_bytes"] / max(r["step_edges"], 1), 1)),
    ]


def kg_export() -> list[dict[str, Any]]:
    _train_result()
    r = _run_child("export", {"cache": str(synthetic_cache()), "model": str(MODEL_PATH)})
    if r is None:
        raise RuntimeError("the export benchmark process failed")
    name = "kg_export"
    return [
        row(name, "peak RSS of export (GB)", round(r["peak_rss_gb"], 3), f"< {EXPORT_TARGET_GB}",
            r["peak_rss_gb"] < EXPORT_TARGET_GB),
        row(name, "seconds: layer-wise inference (2 passes) / whole export", f"{r['inference_seconds']:.1f} / {r['seconds']:.1f}"),
        row(name, "embeddings written: CSV / parquet (GB)", f"{r['csv_gb']:.2f} / {r['parquet_gb']:.2f}"),
    ]


def kg_full_batch() -> list[dict[str, Any]]:
    sampled = _train_result()
    per_edge_sampled = sampled["step_activation_bytes"] / max(sampled["step_edges"], 1)
    fits, tried = None, []
    for scale in FULL_BATCH_SCALES:
        r = _run_child("full", {"scale": scale}, cap_gb=FULL_BATCH_CAP_GB)
        tried.append((scale, r))
        if r is None:
            break
        if r["peak_rss_gb"] < TRAIN_TARGET_GB:
            fits = r
    name = "kg_full_batch"
    rows = []
    for scale, r in tried:
        rows.append(row(name, f"scale {scale}: nodes / message edges / peak RSS GB",
                        "killed above %.0f GB" % FULL_BATCH_CAP_GB if r is None else
                        f"{r['nodes']:,} / {r['message_edges']:,} / {r['peak_rss_gb']:.2f}"))
    if fits is None:
        rows.append(row(name, "largest graph a full-batch step holds in the training budget", "none"))
        return rows
    per_edge_full = fits["activation_bytes"] / fits["message_edges"]
    rows += [
        row(name, f"largest graph a full-batch step holds in {TRAIN_TARGET_GB} GB (scale)", fits["scale"]),
        row(name, "full-batch activation bytes per edge", round(per_edge_full, 1)),
        row(name, "memory per processed edge: full-batch / sampled", round(per_edge_full / per_edge_sampled, 2)),
        row(name, "full graph (scale 1) edges / largest full-batch edges",
            round(sampled["message_edges"] / fits["message_edges"], 1)),
    ]
    return rows


def main(argv: list[str]) -> int:
    import torch

    from pipeline.hostmem import fix_mmap_threshold

    torch.set_num_threads(BENCH_THREADS)
    fix_mmap_threshold()  # as the KG stages do
    mode, args = argv[0], json.loads(argv[1])
    result = {"train": child_train, "export": child_export, "full": child_full}[mode](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
