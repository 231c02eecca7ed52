"""The allocator setting of the knowledge-graph stages."""
from __future__ import annotations

import platform

import pytest

from pipeline.kg import hostmem


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_sets_the_threshold_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert hostmem.fix_mmap_threshold() is True


def test_leaves_an_explicit_environment_setting_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert hostmem.fix_mmap_threshold() is False
