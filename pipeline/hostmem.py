"""Host memory the C allocator holds on to: glibc settings that keep a job's RSS at what its
tensors need (the host's counterpart of the CUDA caching allocator's ``empty_cache``).

A knowledge-graph job's resident memory, step after step:

Every sampled step allocates and frees tensors of a few MB to a few hundred MB. glibc's malloc
serves a request from its own heap unless it is larger than the mmap threshold, and that
threshold is dynamic: each freed mapping raises it (up to 32 MB on 64-bit). After a few steps
most activations come from the heap, and freed heap is fragmented and rarely given back. On the
full-scale synthetic PrimeKG (bench/kg_bench.py) the training process's peak RSS crept from 2.6 to
3.9 GB over 22 steps of the same size. With the threshold fixed at 1 MiB every larger tensor gets
its own mapping, returned to the system when freed, and the peak stayed at 2.7 GB (at 8 MiB it
still crept). The price is a page fault on every fresh page of those tensors; the benchmark's
seconds per step include it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3
"""mallopt parameter number (glibc malloc.h)."""
MMAP_THRESHOLD_BYTES = 1 << 20
"""Allocations from this size up get their own mapping (glibc's static default is 128 KiB)."""


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim   # glibc only (not musl, macOS)
    except (OSError, AttributeError):
        return None
    return libc


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold (which also stops its dynamic growth); False where this is not glibc.

    ``MALLOC_MMAP_THRESHOLD_`` in the environment wins: it is the operator's explicit choice.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = _glibc()
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold))) if libc else False


def release_freed_heap() -> bool:
    """Hand freed heap pages back to the system; False where this is not glibc.

    glibc keeps freed chunks in its arenas: after a pass of large transient tensors (inference
    chunks, an out-of-memory retry) that retained heap adds to every later peak RSS of the job.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
