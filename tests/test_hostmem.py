"""glibc allocator settings: the KG stages' mmap threshold, freed heap handed back."""
from __future__ import annotations

import platform

import pytest

from pipeline import hostmem


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_sets_the_threshold_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert hostmem.fix_mmap_threshold() is True


def test_leaves_an_explicit_environment_setting_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert hostmem.fix_mmap_threshold() is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_heap_is_trimmed_on_glibc_and_skipped_elsewhere(monkeypatch):
    assert hostmem.release_freed_heap() is True
    monkeypatch.setattr(hostmem.ctypes.util, "find_library", lambda name: None)
    assert hostmem.release_freed_heap() is False
    assert hostmem.fix_mmap_threshold() is False
