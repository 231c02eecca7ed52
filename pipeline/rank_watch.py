"""Which rank of a data-parallel stage stopped, on which node, and where its log is.

A collective that fails says little: gloo reports "Connection closed by peer [127.0.0.1]:port" or
"Timed out waiting 600000ms", naming neither the rank nor the node. So every rank, once the process
group is up, registers its host, pid and log in the rendezvous store (a ``TCPStore`` that rank 0
hosts) and bumps a heartbeat counter there every ``HEARTBEAT_S`` from a thread of its own; that
thread keeps beating while the main thread waits in a collective (collectives release the GIL). A
rank that fails notes why in the store before it leaves.

When rank 0's collective fails, it compares the counters over ``STALL_S``: a rank whose counter did
not move and that left no note is gone (killed, frozen, or its node lost), and rank 0's error names
it, its node and its log (:class:`RankLost`). Counters, not clocks, so nodes need not agree on the
time. Nothing here is written to the run directory: only rank 0 writes there.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import UserError

if TYPE_CHECKING:  # torch is imported by whoever builds a process group, not by the launch layer's import
    import torch.distributed as dist

HEARTBEAT_S = 1.0
"""How often each rank bumps its counter."""
STALL_S = 2.5 * HEARTBEAT_S
"""How long rank 0 watches the counters after a failed collective: a live rank beats twice in it."""
NOTE_TIMEOUT_S = 5.0
"""Store operations of the failure path give up after this (the store's host may be gone too)."""
RANK_LOG_ENV = "PIPELINE_RANK_LOG"
"""This rank's own log file, exported by whoever launched it (``jobs.stage_job``: submitit's per-task stderr)."""

_COMMUNICATION_WORDS = ("gloo", "nccl", "NCCL", "Connection", "connection", "Timed out", "timed out", "Socket")


class RankLost(UserError, RuntimeError):
    """A rank of a data-parallel stage stopped answering; the message names it, its node and its log."""


@dataclass(frozen=True)
class RankInfo:
    rank: int
    host: str
    pid: int
    log: str | None

    def describe(self) -> str:
        where = f"node {self.host}, pid {self.pid}"
        return f"rank {self.rank} ({where}; its log: {self.log})" if self.log else f"rank {self.rank} ({where})"


def node_name() -> str:
    """This node as the scheduler names it (SLURMD_NODENAME, what squeue and sinfo show), else its host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an error, without the C++ source location gloo and c10d put in front."""
    line = (str(exc).splitlines() or [""])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", line)[:limit]


def is_communication_error(exc: BaseException) -> bool:
    """A failed collective or rendezvous (torch's DistError; gloo raises plain RuntimeErrors)."""
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc) for w in _COMMUNICATION_WORDS)


class RankWatch:
    """Registration, heartbeat and failure notes of this rank; rank 0 also diagnoses failures."""

    def __init__(self, store: dist.Store, rank: int, world: int) -> None:
        self.store, self.rank, self.world = store, rank, world
        self._stop = threading.Event()
        info = RankInfo(rank, node_name(), os.getpid(), os.environ.get(RANK_LOG_ENV) or None)
        store.set(f"rank_watch/info/{rank}", json.dumps(info.__dict__))
        self._thread = threading.Thread(target=self._beat, name=f"rank-watch-{rank}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        key = f"rank_watch/beat/{self.rank}"
        while not self._stop.is_set():
            try:
                self.store.add(key, 1)
            except Exception:  # the store's host (rank 0) is gone: nobody is left to read the beats
                return
            self._stop.wait(HEARTBEAT_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * HEARTBEAT_S)

    def info(self, rank: int) -> RankInfo:
        return RankInfo(**json.loads(self.store.get(f"rank_watch/info/{rank}")))

    def note_failure(self, exc: BaseException) -> None:
        """Say why this rank leaves, so rank 0 does not report it as lost (best effort, bounded)."""
        try:
            self.store.set_timeout(dt.timedelta(seconds=NOTE_TIMEOUT_S))
            self.store.set(f"rank_watch/failed/{self.rank}", f"{type(exc).__name__}: {first_line(exc)}")
        except Exception:
            pass

    def _counters(self) -> dict[int, int]:
        return {r: int(self.store.add(f"rank_watch/beat/{r}", 0)) for r in range(self.world) if r != self.rank}

    def _note(self, rank: int) -> str | None:
        key = f"rank_watch/failed/{rank}"
        return self.store.get(key).decode() if self.store.check([key]) else None

    def explain(self, exc: BaseException, timeout_key: str, timeout_s: float) -> BaseException:
        """On rank 0 after its collective failed: a :class:`RankLost` naming the ranks that stopped
        (or that failed first, with their reason), else ``exc`` itself (rank 0's own failure)."""
        if self.rank != 0 or not is_communication_error(exc):
            return exc
        try:
            self.store.set_timeout(dt.timedelta(seconds=NOTE_TIMEOUT_S))
            before = self._counters()
            time.sleep(STALL_S)
            after = self._counters()
            notes = {r: self._note(r) for r in after}
            lost = [self.info(r) for r in after if after[r] == before[r] and notes[r] is None]
            failed = [(self.info(r), note) for r, note in notes.items() if note is not None]
        except Exception:  # the store itself is broken: nothing better to say than the error
            return exc
        if not lost and not failed:
            return exc
        parts = [f"{info.describe()} stopped answering (no heartbeat for {STALL_S:g}s)" for info in lost]
        parts += [f"{info.describe()} failed first: {note}" for info, note in failed]
        return RankLost(f"data-parallel stage of {self.world} ranks stopped: {'; '.join(parts)}. Rank 0 saw: "
                        f"{type(exc).__name__}: {first_line(exc)} (a collective waits at most "
                        f"{timeout_key}={timeout_s:g}s; a lost node is retried by resuming the run)")
