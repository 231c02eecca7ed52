"""The memory budget of a training step: what is left for activations, and why.

usable = device total x safety_factor - fixed overhead - static (params, grads, optimizer, teacher)

On a CPU target the process itself is a line too (its resident baseline, glibc's slack). The plan
cache and the out-of-memory helpers live here as well: a cached plan is its budget plus the
workload's plan, and the back-off frees what a failed step left behind.
"""
from __future__ import annotations

import gc
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from pipeline import distributed, hostmem, io
from pipeline.memory.limits import GiB, MiB
from pipeline.memory.measure import ActivationFit, ProbePoint

CUDA_CONTEXT_BYTES = 600 * MiB
"""CUDA context, cuBLAS/cuDNN handles and workspaces: not visible to the caching allocator."""
FRAGMENTATION = 0.10
"""Share of the usable memory kept back for allocator fragmentation and rounding."""
HOST_ALLOCATOR_SLACK = 0.10
"""Extra share of a CPU budget kept back: with large tensors freed and reallocated every step,
glibc keeps freed heap in its arenas, and the process's peak RSS ran ~10% of the budget above
the sum of measured tensor bytes on the full-scale synthetic PrimeKG (bench/kg_bench.py)."""


# -- static costs ----------------------------------------------------------------

def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages (a storage shared by several tensors is counted once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t.device.type == "meta":
            total += t.numel() * t.element_size()
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def static_costs(model: torch.nn.Module, optimizer_states: int = 2, teacher: torch.nn.Module | None = None,
                 embedding_types: tuple[type, ...] = (torch.nn.Embedding,)) -> dict[str, int]:
    """Parameters, gradients, optimizer state (AdamW keeps 2 per trainable parameter), teacher, embeddings."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    embeddings = [p for m in model.modules() if isinstance(m, embedding_types) for p in m.parameters()]
    return {
        "parameters": tensor_bytes(params),
        "gradients": tensor_bytes(trainable),
        "optimizer state": optimizer_states * tensor_bytes(trainable),
        "teacher (on device)": tensor_bytes(teacher.parameters()) if teacher is not None else 0,
        "of which embedding tables": tensor_bytes(embeddings),
    }


def process_baseline(model: torch.nn.Module) -> int:
    """Resident memory of this process, less the model's own CPU parameters (counted as parameters).

    Taken before probing: probes leave freed heap in glibc's arenas, which is the allocator
    slack's share, not the baseline's.
    """
    import psutil

    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == "cpu")
    return max(0, psutil.Process().memory_info().rss - params)


def host_process_lines(baseline: int, total: int) -> tuple[dict[str, int], dict[str, int]]:
    """What the process itself takes of a CPU budget, as (fixed, static) budget lines.

    On the host the interpreter, torch, PyG and the mapped cache share the job's memory limit
    with the tensors; a plan that counts only tensors gets the job killed under a tight --mem.
    """
    return ({"host allocator slack": int(total * HOST_ALLOCATOR_SLACK)},
            {"interpreter and libraries (RSS)": baseline})


# -- budget and plan ---------------------------------------------------------------

@dataclass
class MemoryBudget:
    device: str
    total: int
    total_source: str
    safety_factor: float
    fixed: dict[str, int]
    static: dict[str, int]
    activation: ActivationFit

    @property
    def static_total(self) -> int:
        return sum(v for k, v in self.static.items() if not k.startswith("of which"))

    @property
    def fixed_total(self) -> int:
        return sum(self.fixed.values())

    @property
    def usable_for_activations(self) -> int:
        return int(self.total * self.safety_factor) - self.fixed_total - self.static_total

    def planned(self, predicted_bytes: int) -> dict[str, float]:
        """The plan's figures every metrics.jsonl line carries, beside the measured peak."""
        return {"planned_mb": round(predicted_bytes / MiB, 1), "device_total_mb": round(self.total / MiB, 1)}

    def table(self) -> str:
        rows = [("device", f"{self.device} ({self.total_source})"), ("device total", format_bytes(self.total)),
                (f"x safety_factor {self.safety_factor}", format_bytes(self.total * self.safety_factor))]
        rows += [(f"- {k}", format_bytes(v)) for k, v in self.fixed.items()]
        rows += [(f"- {k}" if not k.startswith("of which") else f"  ({k})", format_bytes(v))
                 for k, v in self.static.items()]
        rows += [("= for activations", format_bytes(self.usable_for_activations)),
                 ("activation / node", f"{self.activation.per_node:,.0f} B"),
                 ("activation / edge", f"{self.activation.per_edge:,.0f} B"),
                 ("activation base", format_bytes(self.activation.base)),
                 ("cost model", f"{self.activation.mode} (fit error {self.activation.max_error():.1%})")]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{k:<{width}}  {v:>14}" for k, v in rows)


def fixed_overhead(device: torch.device, total: int) -> dict[str, int]:
    fixed = {"allocator fragmentation buffer": int(total * FRAGMENTATION)}
    if device.type == "cuda":
        fixed["CUDA context"] = CUDA_CONTEXT_BYTES
    return fixed


def cached_plan(path: str | os.PathLike, key: str) -> tuple[MemoryBudget, dict[str, Any]] | None:
    """The budget and raw plan saved at ``path`` for ``key``, or None when absent or for other inputs."""
    path = Path(path)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("key") != key:
        return None
    act = data["budget"].pop("activation")
    fit = ActivationFit(**{**act, "points": [ProbePoint(**p) for p in act["points"]]})
    return MemoryBudget(**data["budget"], activation=fit), data["plan"]


def write_plan(path: str | os.PathLike, key: str, budget: MemoryBudget, plan: Any, detail: Any = None) -> None:
    """Save a plan under ``key`` with its budget; the fields of ``detail`` (a dataclass: the workload's
    own fit) become sections of their own beside them. In data-parallel training only rank 0 writes
    (every rank plans for its own device; rank 0's budget is the one the loop broadcasts)."""
    if distributed.rank() != 0:
        return
    sections = asdict(detail) if detail is not None else {}
    io.write_json(path, {"key": key, "budget": asdict(budget), **sections, "plan": asdict(plan)})


# -- out-of-memory back-off -----------------------------------------------------------

def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
    else:
        hostmem.release_freed_heap()


def format_bytes(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number at 1 or more (e.g. "1.50 GiB")."""
    n = float(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"

