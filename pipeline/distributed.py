"""Data-parallel training across processes: process group set-up from the environment, rank helpers
and the few collectives the training loop needs.

Whoever starts the processes (submitit's ``TorchDistributedEnvironment`` in a multi-task job, or
``torchrun``) exports torch's ``env://`` variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT. This module reads only those, so the library does not care how it was launched.
With WORLD_SIZE unset or 1 every helper is a no-op and a single process runs exactly as before.

Backends: NCCL when the stage trains on CUDA, gloo on the CPU (and on MPS, which has no
collective backend of its own).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
from typing import Any, Iterator, TypeVar

import torch
import torch.distributed as dist

from pipeline.rank_watch import RankLost, RankWatch, first_line, node_name

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600
"""How long a rank waits for the others (rendezvous and every collective) before it fails, unless the
profile says (``resources.<stage>.collective_timeout_s``).

A rank that exits takes the job down at once (its peers' sockets close; srun's --kill-on-bad-exit
ends the others); the timeout bounds a rank that hangs or a node that vanished without a word.
"""


def requested_world_size() -> int:
    """Processes the launcher started for this job (WORLD_SIZE), 1 when it says nothing."""
    return _env_int("WORLD_SIZE", 1)


def is_active() -> bool:
    """A process group of more than one rank is initialised in this process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if is_active() else 0


def local_world_size() -> int:
    """Ranks started on this node (LOCAL_WORLD_SIZE, exported by submitit and torchrun), 1 if unset."""
    return max(1, _env_int("LOCAL_WORLD_SIZE", 1))


def is_main() -> bool:
    """Rank 0, the only process that writes run files (checkpoints, metrics, done markers)."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(device: torch.device, log: logging.Logger | None = None, timeout_s: float | None = None,
                  timeout_key: str = "the collective timeout") -> Iterator[bool]:
    """Join the launcher's process group for the duration of a stage; yields whether one was joined.

    Without WORLD_SIZE > 1 nothing happens. On CUDA each rank is pinned to GPU ``LOCAL_RANK`` first,
    so ``torch.device("cuda")`` means this rank's GPU everywhere in the stage. The rendezvous and
    every collective wait at most ``timeout_s`` (``timeout_key`` names the profile key in errors);
    a failure that a lost rank caused becomes a :class:`~pipeline.rank_watch.RankLost` on rank 0,
    naming that rank, its node and its log.
    """
    world = requested_world_size()
    if world <= 1 or is_active():
        yield False
        return
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the stage through "
                           "`python -m jobs` (submitit exports them) or torchrun")
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        local = _env_int("LOCAL_RANK", 0)
        if local >= gpus:
            raise RuntimeError(f"rank with LOCAL_RANK={local} sees only {gpus} GPU(s): request one GPU per rank "
                               "(resources.<stage>.gpus = tasks_per_node)")
        torch.cuda.set_device(local)
    backend, rank_, timeout = backend_for(device), _env_int("RANK", 0), timeout_s or DEFAULT_TIMEOUT_S
    store = _rendezvous(world, rank_, timeout, timeout_key)
    dist.init_process_group(backend=backend, store=store, world_size=world, rank=rank_,
                            timeout=dt.timedelta(seconds=timeout))
    watch = RankWatch(store, rank_, world)
    if log is not None:
        log.info("data-parallel: rank %d of %d (%s, master %s:%s, collectives wait at most %gs)", rank_, world,
                 backend, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], timeout)
    try:
        yield True
        dist.barrier()  # no rank leaves (and rank 0 writes no done marker) before every rank has finished
    except Exception as exc:
        watch.note_failure(exc)
        explained = watch.explain(exc, timeout_key, timeout)
        if explained is not exc:
            raise explained from exc
        raise
    finally:
        watch.stop()
        dist.destroy_process_group()


def _rendezvous(world: int, rank_: int, timeout_s: float, timeout_key: str) -> dist.TCPStore:
    """The store every rank meets at (rank 0 hosts it on MASTER_ADDR:MASTER_PORT), within ``timeout_s``."""
    host, port = os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 0)
    try:
        return dist.TCPStore(host, port, world, is_master=rank_ == 0, timeout=dt.timedelta(seconds=timeout_s),
                             wait_for_workers=True)
    except Exception as exc:  # DistStoreError / RuntimeError: timed out, or the host does not resolve
        raise RankLost(f"rank {rank_} of {world} on node {node_name()}: the ranks did not all meet at "
                       f"{host}:{port} within {timeout_key}={timeout_s:g}s ({type(exc).__name__}: "
                       f"{first_line(exc)}); check that every node resolves and reaches the first node (on a "
                       "multi-homed node set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME)") from exc


def rank_device(device: torch.device) -> torch.device:
    """``device`` with this rank's GPU index made explicit (DDP needs the index)."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


# -- collectives (identity in a single process) ---------------------------------------------------

def barrier() -> None:
    if is_active():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank, so decisions taken from it are the same everywhere."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place and returned (a copy is not needed: callers own the tensor)."""
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(value: float, device: torch.device) -> float:
    if not is_active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


# -- splitting an epoch ----------------------------------------------------------------------------

def shard_positions(num_batches: int, rank: int, world: int) -> list[tuple[int, bool]]:
    """This rank's batches of an epoch of ``num_batches``: (position in the epoch, is padding).

    Rank r takes positions r, r + world, r + 2 world, ... so one optimizer step of W ranks covers
    the same W consecutive batches that one process with ``grad_accum = W`` accumulates. Every rank
    gets ``ceil(num_batches / world)`` batches (collectives need equal counts); the missing ones are
    earlier batches repeated as padding, which the loop weighs 0.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    per_rank = math.ceil(num_batches / world) if num_batches else 0
    out = []
    for k in range(per_rank):
        pos = k * world + rank
        out.append((pos, False) if pos < num_batches else (pos % num_batches, True))
    return out


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() else default
