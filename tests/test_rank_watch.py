"""A lost rank, on one machine: two real gloo processes, one of which freezes or fails mid-stage.

Rank 0's collective fails (after the timeout for a frozen peer, at once for one that left), and its
error names the rank, its node and its log instead of gloo's "Timed out waiting 3000ms".
"""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import socket
import time

import pytest
import torch

from pipeline import distributed
from pipeline.rank_watch import RANK_LOG_ENV, STALL_S, RankLost, first_line, is_communication_error

TIMEOUT_S = 3
KEY = "resources.teacher.collective_timeout_s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, mode: str, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ[RANK_LOG_ENV] = f"/logs/7_{rank}_log.err"
    torch.set_num_threads(1)
    try:
        with distributed.process_group(torch.device("cpu"), timeout_s=TIMEOUT_S, timeout_key=KEY):
            t = torch.ones(4)
            distributed.all_reduce_sum(t)
            if rank == 1 and mode == "freeze":
                os.kill(os.getpid(), signal.SIGSTOP)   # a node gone quiet: its sockets stay open
            if rank == 1 and mode == "raise":
                raise ValueError("boom in rank 1")
            distributed.all_reduce_sum(t)
        results.put((rank, "ok", ""))
    except Exception as exc:
        results.put((rank, type(exc).__name__, str(exc)))


@pytest.mark.parametrize("mode, says", [
    ("freeze", r"rank 1 \(node [^,]+, pid \d+; its log: /logs/7_1_log\.err\) stopped answering \(no heartbeat"),
    ("raise", r"rank 1 \(node [^,]+, pid \d+; its log: /logs/7_1_log\.err\) failed first: ValueError: boom in rank 1"),
], ids=["frozen", "failed"])
def test_rank_zero_names_the_rank_that_stopped_its_node_and_log(mode, says):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, mode, results), daemon=True) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        got = {}
        while 0 not in got:
            rank, kind, message = results.get(timeout=120)
            got[rank] = (kind, message)
    finally:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            p.join(10)
    kind, message = got[0]
    assert kind == "RankLost", message
    assert re.search(says, message), message
    assert f"{KEY}={TIMEOUT_S}s" in message and "/__w/" not in message  # gloo's source path is dropped


def test_ranks_that_never_meet_fail_at_the_rendezvous_within_the_timeout(monkeypatch):
    port = _free_port()
    for var, value in dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(var, value)
    started = time.monotonic()
    with pytest.raises(RankLost, match=rf"rank 0 of 2 on node .*did not all meet at 127\.0\.0\.1:{port} within "
                                       rf"{KEY}=2s"):
        with distributed.process_group(torch.device("cpu"), timeout_s=2, timeout_key=KEY):
            pass
    assert time.monotonic() - started < 2 + STALL_S + 10
    assert not distributed.is_active()


def test_only_failed_collectives_count_as_communication_errors():
    assert is_communication_error(RuntimeError("[/x/gloo/pair.cc:537] Connection closed by peer [127.0.0.1]:1"))
    assert is_communication_error(RuntimeError("Timed out waiting 3000ms for recv operation to complete"))
    assert not is_communication_error(ValueError("graph cache split unreadable"))
    assert not is_communication_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert first_line(RuntimeError("[/x/gloo/pair.cc:537] Read error: reset\nmore")) == "Read error: reset"
