"""Check 5: throughput for the record: teacher training graphs/s and KG training steps/s.

Both are one timed epoch of the training loop (``Trainer.train_epoch``: loader, host-to-device copy,
AMP step, optimizer), after a few warm-up steps: the GAT teacher at the profile's graphs per batch
under the device's node plan, and the HGT teacher at the seed edges per step its plan allows (at
most the primekg profile's ``kg.max_seed_edges``). No target: the figures describe this machine.
"""
from __future__ import annotations

import time
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from bench.gpu_check.device import total_bytes
from bench.gpu_check.report import Row
from bench.gpu_check.sizes import Sizes
from bench.gpu_check.workloads import Subject, train_step, trainer
from pipeline.can.data.loader import GraphLoader
from pipeline.kg.sampler import LinkBatchLoader

WARMUP_STEPS = 3


def check_throughput(gat: Subject, hgt: Subject, sizes: Sizes, device: torch.device, work: Path) -> list[Row]:
    total = min(total_bytes(device) or sizes.eval_cap_bytes, sizes.eval_cap_bytes)
    with gat.on(device):
        rows = [teacher_row(gat, total, sizes, device, work)]
    with hgt.on(device):
        rows.append(kg_row(hgt, total, sizes, device, work))
    return rows


def teacher_row(gat: Subject, total: int, sizes: Sizes, device: torch.device, work: Path) -> Row:
    planned = gat.plan(total, work / "throughput-gat.json")
    split = gat.data
    graphs = min(sizes.throughput_graphs, len(split))
    loader = GraphLoader(split, gat.profile.train.batch_size, shuffle=True, seed=0, indices=torch.arange(graphs),
                         max_nodes=planned.units)
    seconds = timed_epoch(gat, loader, sizes, device, work / "throughput-gat")
    return Row("5/teacher", f"GAT teacher training: graphs/s ({graphs:,} graphs, {len(loader)} steps of <= "
               f"{gat.profile.train.batch_size} graphs, AMP {gat.profile.train.amp})", round(graphs / seconds, 1))


def kg_row(hgt: Subject, total: int, sizes: Sizes, device: torch.device, work: Path) -> Row:
    planned = hgt.plan(total, work / "throughput-hgt.json")
    seeds = min(planned.units, hgt.profile.kg.max_seed_edges)
    kg = hgt.profile.kg
    kg_loader = LinkBatchLoader(hgt.data, seeds, kg.fanouts[:hgt.model.num_layers], kg.neg_ratio, 0,
                                sizes.throughput_kg_steps, kg.sampler)
    seconds = timed_epoch(hgt, kg_loader, sizes, device, work / "throughput-hgt")
    return Row("5/kg", f"HGT teacher training: steps/s ({sizes.throughput_kg_steps} steps of {seeds} seed "
               f"edges, sampler {kg.sampler})", round(sizes.throughput_kg_steps / seconds, 2))


def timed_epoch(subject: Subject, loader: Any, sizes: Sizes, device: torch.device, folder: Path) -> float:
    """Seconds of one training epoch over ``loader``, after WARMUP_STEPS steps of its batches."""
    t = trainer(subject.model, subject.loss_fn, subject.profile, folder, device, sizes.threads, loader)
    for batch in islice(iter(loader), WARMUP_STEPS):
        train_step(t, batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    t.train_epoch(1)   # ends on a host read of the loss: the device has finished
    return time.perf_counter() - started
