"""Our encoders against standard knowledge-graph embedding models, on the same split, judged the same way.

``kg_peers`` trains, on ACM (../shared/data/hetero/acm) and on the synthetic PrimeKG-shaped graph:

* our teacher with each decoder (``pipeline.kg.decoders``: DistMult, ComplEx, RotatE), through the
  real stages; the decoder is chosen on the validation edges' filtered MRR, and the student is then
  distilled with it. On ACM both without labels and with the ``acm`` profile's label inputs;
* TransE, DistMult, ComplEx and RotatE from PyKEEN (the optional extra ``peers``) on exactly the
  training edges of our cache, each given a time budget equal to our chosen teacher's training time
  on this machine (CPU seconds of this process, so other work on a shared machine slows both
  alike), spent on a small sweep (``SWEEP``: embedding width x learning rate) with early
  stopping on the same validation filtered MRR; the configuration with the best validation MRR is
  reported.

Every model is scored by ``pipeline.kg.ranking.filtered_link_prediction``: head and tail prediction of
every test edge, type-restricted candidates, every other true edge filtered, ties at the mean rank.
Only test numbers of choices made on validation are reported. Results are saved as they come to
``bench/results/kg_peers.json``, and a run picks up from there (``KG_PEERS_FRESH=1`` starts over).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from bench.kg_bench import synthetic_cache
from pipeline import io
from pipeline.config import PROJECT_ROOT, load_profile
from pipeline.kg.build import kg_preprocess
from pipeline.kg.cache import KGGraph
from pipeline.kg.decoders import DECODERS
from pipeline.kg.inference import embed_nodes
from pipeline.kg.ranking import EmbeddingScorer, filtered_link_prediction
from pipeline.runner import fingerprint_for, run_stage
from pipeline.runs import RunDir
from pipeline.train import load_model

RESULTS = Path(__file__).resolve().parent / "results"
STATE = RESULTS / "kg_peers.json"
ACM_DATA = PROJECT_ROOT.parent / "shared" / "data"
PEERS = ("TransE", "DistMult", "ComplEx", "RotatE")
SWEEP = ((64, 1e-2), (128, 1e-2), (64, 1e-3), (128, 1e-3))
"""(embedding width, learning rate) of each peer configuration; each gets a quarter of the budget."""
PATIENCE = 5
"""Evaluations without a better validation MRR before a peer configuration stops."""
EVAL_EVERY_S = 10.0
"""A peer is scored on the validation edges after the epoch that passes this much more CPU time."""
SYNTHETIC_SCALE = 0.01
BUDGET_BYTES = 1 << 30
THREADS = int(os.environ.get("KG_BENCH_THREADS", "2"))
LABEL_FREE = ["kg.label_weight=0", "kg.label_input=false"]
SYNTHETIC = ["train.epochs=20", "train.patience=5", "kg.fanouts=[10, 5]",
             "kg_model.teacher.hidden=128", "kg_model.teacher.out=128", "kg_model.teacher.heads=4"]


# -- our models, through the real stages -----------------------------------------------------------

def _graph_setup(graph_name: str, root: Path) -> tuple[str, list[str], Path | None]:
    """(profile, overrides, prebuilt cache or None) of a graph."""
    if graph_name == "acm":
        return "acm", [f"data_root={ACM_DATA}", f"data.cache_dir={root / 'cache'}"], None
    return "primekg", [f"data.cache_dir={root / 'cache'}", *SYNTHETIC], synthetic_cache(SYNTHETIC_SCALE)


def train_ours(graph_name: str, decoder: str, extra: list[str], stages: tuple[str, ...], root: Path) -> RunDir:
    """A run of our chain's training stages with ``decoder`` for teacher and student."""
    name, overrides, cache = _graph_setup(graph_name, root)
    profile = load_profile(name, [*overrides, *extra, f"train.threads={THREADS}",
                                  f"kg_model.teacher.decoder={decoder}", f"kg_model.student.decoder={decoder}"])
    run = RunDir.create(profile, root=root / "runs", run_id=f"{graph_name}-{decoder}-{len(extra)}")
    if cache is None:
        run_stage(run.path, "preprocess")
    else:   # the generator's graph: the preprocess stage's record, pointing at the built cache
        run.mark_done("preprocess", fingerprint_for(run, profile, "preprocess"),
                      {"cache_dir": str(cache), "result_key": KGGraph.open(cache).manifest["key"]})
    for stage in stages:
        started = time.process_time()
        record = run_stage(run.path, stage)
        if "cpu_seconds" not in record:   # trained now (a done stage is found, not trained again)
            record["cpu_seconds"] = time.process_time() - started
            io.write_json(run.path / stage / "done.json", record)
    return run


def score_ours(run: RunDir, role: str) -> dict[str, Any]:
    """Filtered ranks of one trained model on the validation and test edges (training-graph embeddings)."""
    graph = KGGraph.open(run.done_record("preprocess")["cache_dir"])
    model = load_model(run.path / role / "best.pt")
    profile = run.profile()
    emb = embed_nodes(model, graph, profile.kg.export_chunk_nodes, profile.kg.export_chunk_edges,
                      seed=profile.kg.split_seed)
    scorer = EmbeddingScorer(model, graph, emb)
    out = {split: filtered_link_prediction(graph, scorer, BUDGET_BYTES, split=split) for split in ("val", "test")}
    return {"val_mrr": out["val"]["mean_over_relations"]["mrr"], "test": _headline(out["test"]),
            "train_cpu_seconds": run.done_record(role)["cpu_seconds"], "params": run.done_record(role)["params"]}


def _headline(result: dict[str, Any]) -> dict[str, float]:
    rel, edges = result["mean_over_relations"], result["mean_over_edges"]
    return {"mrr": rel["mrr"], "hits@1": rel["hits@1"], "hits@3": rel["hits@3"], "hits@10": rel["hits@10"],
            "mrr_over_edges": edges["mrr"]}


# -- peers (PyKEEN) --------------------------------------------------------------------------------

class PeerScorer:
    """A PyKEEN model on our graph's typed node ranges: entity id = type offset + local id."""

    def __init__(self, model: Any, graph: KGGraph, offsets: dict[str, int]):
        self.model, self.graph, self.offsets = model, graph, offsets

    def _types(self, k: int, side: str) -> tuple[str, str]:
        entry = self.graph.edge_types[k]
        return (entry["src_alias"], entry["dst_alias"]) if side == "tail" else (entry["dst_alias"], entry["src_alias"])

    def candidates(self, k: int, side: str) -> int:
        return self.graph.num_nodes[self._types(k, side)[1]]

    def _ask(self, k: int, side: str, anchors: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        anchor_type, other_type = self._types(k, side)
        ids = anchors + self.offsets[anchor_type]
        rel = torch.full_like(ids, k)
        others = others + self.offsets[other_type]
        with torch.no_grad():
            if side == "tail":
                return self.model.score_t(torch.stack([ids, rel], 1), tails=others)
            return self.model.score_h(torch.stack([rel, ids], 1), heads=others)

    def all(self, k: int, side: str, anchors: torch.Tensor) -> torch.Tensor:
        return self._ask(k, side, anchors, torch.arange(self.candidates(k, side)))

    def some(self, k: int, side: str, anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self._ask(k, side, anchors, candidates)

    def table_bytes(self, k: int, side: str) -> int:
        return 0


def train_peer(peer: str, graph: KGGraph, dim: int, lr: float, budget_s: float, seed: int = 0) -> dict[str, Any]:
    """One PyKEEN configuration: train until the budget or the patience runs out, keep the epoch with
    the best validation filtered MRR; return it scored on test."""
    from pykeen import models
    from pykeen.training import SLCWATrainingLoop
    from pykeen.triples import TriplesFactory

    offsets, start = {}, 0
    for t in graph.node_types:
        offsets[t], start = start, start + graph.num_nodes[t]
    triples = torch.cat([torch.stack([graph.edges(k, "train")[0].long() + offsets[e["src_alias"]],
                                      torch.full((graph.edges(k, "train").shape[1],), k),
                                      graph.edges(k, "train")[1].long() + offsets[e["dst_alias"]]], 1)
                         for k, e in enumerate(graph.edge_types)])
    factory = TriplesFactory(mapped_triples=triples, entity_to_id={str(i): i for i in range(start)},
                             relation_to_id={str(k): k for k in range(len(graph.edge_types))})
    torch.manual_seed(seed)
    model = getattr(models, peer)(triples_factory=factory, embedding_dim=dim, random_seed=seed)
    loop = SLCWATrainingLoop(model=model, triples_factory=factory,
                             optimizer=torch.optim.Adam(model.get_grad_params(), lr=lr))
    scorer = PeerScorer(model, graph, offsets)
    best: dict[str, Any] = {"val_mrr": -1.0}
    started, last_eval, epoch, stale = time.process_time(), 0.0, 0, 0
    while time.process_time() - started < budget_s and stale < PATIENCE:
        epoch += 1
        loop.train(triples_factory=factory, num_epochs=epoch, batch_size=512, use_tqdm=False,
                   continue_training=epoch > 1)
        spent = time.process_time() - started
        if spent - last_eval < EVAL_EVERY_S and spent < budget_s:
            continue
        last_eval = spent
        val = filtered_link_prediction(graph, scorer, BUDGET_BYTES, split="val")["mean_over_relations"]["mrr"]
        if val > best["val_mrr"]:
            best = {"val_mrr": val, "epoch": epoch, "state": {k: v.clone() for k, v in model.state_dict().items()}}
            stale = 0
        else:
            stale += 1
    model.load_state_dict(best["state"])
    test = filtered_link_prediction(graph, scorer, BUDGET_BYTES, split="test")
    return {"peer": peer, "dim": dim, "lr": lr, "val_mrr": best["val_mrr"], "best_epoch": best["epoch"],
            "epochs": epoch, "cpu_seconds": time.process_time() - started, "test": _headline(test)}


def best_peer(peer: str, graph: KGGraph, budget_s: float) -> dict[str, Any]:
    """The sweep of one peer, the budget split evenly; the configuration chosen on validation."""
    tried = [train_peer(peer, graph, dim, lr, budget_s / len(SWEEP)) for dim, lr in SWEEP]
    chosen = max(tried, key=lambda r: r["val_mrr"])
    return {**chosen, "sweep": [{k: r[k] for k in ("dim", "lr", "val_mrr", "best_epoch", "epochs")} for r in tried]}


# -- the benchmark ---------------------------------------------------------------------------------

def _state() -> dict[str, Any]:
    if os.environ.get("KG_PEERS_FRESH") or not STATE.exists():
        return {}
    return json.loads(STATE.read_text())


def _step(state: dict[str, Any], key: str, compute) -> Any:
    """``state[key]``, computed (and saved at once) unless an earlier run of the benchmark has it."""
    if key not in state:
        state[key] = compute()
        io.write_json(STATE, state)
    return state[key]


def compare_on(graph_name: str, state: dict[str, Any], root: Path) -> None:
    """Every result of one graph into ``state``: our decoders, our chosen chain, the peers."""
    torch.set_num_threads(THREADS)
    free = LABEL_FREE if graph_name == "acm" else []
    for decoder in DECODERS:
        _step(state, f"{graph_name}/ours/{decoder}/teacher",
              lambda d=decoder: score_ours(train_ours(graph_name, d, free, ("teacher",), root), "teacher"))
    chosen = max(DECODERS, key=lambda d: state[f"{graph_name}/ours/{d}/teacher"]["val_mrr"])
    state[f"{graph_name}/decoder"] = chosen
    variants = {"label-free": free, **({"label inputs": []} if graph_name == "acm" else {})}
    for variant, extra in variants.items():
        run = None
        for role in ("teacher", "student"):
            def train_and_score(role=role, extra=extra):
                nonlocal run
                run = run or train_ours(graph_name, chosen, extra, ("teacher", "student"), root)
                return score_ours(run, role)
            _step(state, f"{graph_name}/ours/{variant}/{chosen}/{role}", train_and_score)
    budget = state[f"{graph_name}/ours/{chosen}/teacher"]["train_cpu_seconds"]
    graph = KGGraph.open(cache_of(root, graph_name))
    for peer in PEERS:
        _step(state, f"{graph_name}/peer/{peer}", lambda p=peer: best_peer(p, graph, budget))


def cache_of(root: Path, graph_name: str) -> Path:
    """The cache our runs trained on (the peers train on exactly its training edges)."""
    if graph_name != "acm":
        return synthetic_cache(SYNTHETIC_SCALE)
    profile = load_profile("acm", [f"data_root={ACM_DATA}", f"data.cache_dir={root / 'cache'}"])
    return Path(kg_preprocess(profile, logging.getLogger("bench.kg_peers"))["cache_dir"])


def kg_peers() -> list[dict[str, Any]]:
    try:
        import pykeen  # noqa: F401
    except ImportError:
        return [{"metric": "skipped: PyKEEN is not installed (pip install '.[peers]')", "value": None}]
    state = _state()
    root = RESULTS / "kg_peers"
    root.mkdir(parents=True, exist_ok=True)
    for graph_name in ("acm", "synthetic"):
        compare_on(graph_name, state, root)
    io.write_json(STATE, state)
    return rows(state)


def rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for graph_name in ("acm", "synthetic"):
        chosen = state[f"{graph_name}/decoder"]
        for decoder in DECODERS:
            r = state[f"{graph_name}/ours/{decoder}/teacher"]
            out.append(_row(f"{graph_name}: our teacher, label-free, decoder {decoder}"
                            f"{' (chosen on val)' if decoder == chosen else ''}", r))
        ours = {k.split("/")[2] + " " + k.split("/")[4]: v for k, v in state.items()
                if k.startswith(f"{graph_name}/ours/") and k.count("/") == 4 and k.split("/")[3] == chosen}
        for name, r in ours.items():
            out.append(_row(f"{graph_name}: our {name}, decoder {chosen}", r))
        peers = [state[f"{graph_name}/peer/{p}"] for p in PEERS]
        for r in peers:
            out.append(_row(f"{graph_name}: {r['peer']} (dim {r['dim']}, lr {r['lr']}, chosen on val)", r))
        best = max(peers, key=lambda r: r["val_mrr"])
        pools = {"ours": ours}
        label_free = {k: v for k, v in ours.items() if k.startswith("label-free")}
        if label_free != ours:   # the like-for-like comparison: peers read no labels
            pools["our label-free models"] = label_free
        for which, pool in pools.items():
            declared = max(pool.values(), key=lambda r: r["val_mrr"])
            for average, key in (("averaged over relations", "mrr"), ("averaged over edges", "mrr_over_edges")):
                gap = declared["test"][key] - best["test"][key]
                out.append({"metric": f"{graph_name}: best of {which} (on val) minus best peer (on val), "
                                      f"test filtered MRR {average}",
                            "value": round(gap, 4), "target": ">= 0", "ok": gap >= 0})
    return out


def _row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    t = r["test"]
    return {"metric": f"{name}: test filtered MRR / H@1 / H@3 / H@10 (val MRR)",
            "value": f"{t['mrr']:.4f} / {t['hits@1']:.4f} / {t['hits@3']:.4f} / {t['hits@10']:.4f} "
                     f"({r['val_mrr']:.4f})"}
