"""How much memory this job may use: the device total the planner budgets for, and where it comes from.

On an accelerator the driver says; on the host the tightest of the cgroup limits, SLURM's --mem and
physical memory, shared among the data-parallel ranks on the node. ``PIPELINE_MEMORY_GB`` replaces
the detected total, and a preflight for another device names its target directly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import distributed

GiB = 1024**3
MiB = 1024**2
MEMORY_GB_ENV = "PIPELINE_MEMORY_GB"
"""Environment variable that replaces the detected device total (GB) the planner budgets for."""


# -- device total --------------------------------------------------------------

@dataclass(frozen=True)
class DeviceMemory:
    total: int
    source: str


def device_memory(device: torch.device, target_gb: float | None = None) -> DeviceMemory:
    """Memory the device offers this job: the planned target, CUDA/MPS totals, or the CPU limit.

    ``PIPELINE_MEMORY_GB`` replaces the detected total, for a node whose limit the job cannot
    see (shared without cgroup enforcement). Above the job's real limit it overcommits: the plan
    then fills memory the job does not have, which the cluster's memory kill test relies on.
    """
    if target_gb is not None:
        return DeviceMemory(int(target_gb * GiB), "profile target")
    override = os.environ.get(MEMORY_GB_ENV, "").strip()
    if override:
        return DeviceMemory(int(float(override) * GiB), MEMORY_GB_ENV)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(total, "torch.cuda.mem_get_info")
    if device.type == "mps":
        return DeviceMemory(int(torch.mps.recommended_max_memory()), "torch.mps.recommended_max_memory")
    limit = cpu_memory_limit()
    ranks = distributed.local_world_size()
    if ranks > 1:   # data-parallel ranks on one node share its host memory; each plans for its share
        return DeviceMemory(limit.total // ranks, f"{limit.source} / {ranks} ranks on this node")
    return limit


def cpu_memory_limit() -> DeviceMemory:
    """The tightest of: the process's cgroup limits, SLURM's --mem / --mem-per-cpu, physical memory."""
    candidates: list[DeviceMemory] = cgroup_memory_limits()
    per_node = os.environ.get("SLURM_MEM_PER_NODE")
    if per_node and per_node.isdigit():
        candidates.append(DeviceMemory(int(per_node) * MiB, "SLURM_MEM_PER_NODE"))
    per_cpu, cpus = os.environ.get("SLURM_MEM_PER_CPU"), os.environ.get("SLURM_CPUS_ON_NODE")
    if per_cpu and per_cpu.isdigit() and cpus and cpus.isdigit():
        candidates.append(DeviceMemory(int(per_cpu) * int(cpus) * MiB, "SLURM_MEM_PER_CPU x SLURM_CPUS_ON_NODE"))
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    candidates.append(DeviceMemory(pages * page_size, "physical memory"))
    return min(candidates, key=lambda c: c.total)


CGROUP_UNLIMITED = 1 << 60
"""cgroup v1 writes "no limit" as a huge page-aligned number (v2 writes "max")."""


def cgroup_memory_limits(proc_cgroup: str | Path = "/proc/self/cgroup",
                         root: str | Path = "/sys/fs/cgroup") -> list[DeviceMemory]:
    """Memory limits of this process's cgroup and of every ancestor (each one applies).

    The process's own cgroup, not the root's: SLURM's task/cgroup plugin sets the job's limit on
    ``.../job_<id>`` and places the steps below it, and a container's limit sits on its own
    group. cgroup v2 (``0::/path``) reads ``memory.max``; v1 (``N:...memory...:/path``) reads
    ``memory/<path>/memory.limit_in_bytes``.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return []
    root = Path(root)
    found: list[DeviceMemory] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, group = parts
        if hierarchy == "0" and controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = base / group.strip("/")
        while True:
            try:
                raw = (folder / name).read_text().strip()
            except OSError:
                raw = ""
            if raw.isdigit() and int(raw) < CGROUP_UNLIMITED:
                found.append(DeviceMemory(int(raw), f"cgroup {folder / name}"))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return found

