"""Peak memory, one helper set for the loop, the stages and the runner (``pipeline.device``)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from pipeline.device import peak_device_mb, peak_rss_mb, reset_peak
from pipeline.runner import peak_rss_mb as runner_peak_rss_mb


def test_peak_rss_is_the_kernels_high_water_mark_in_mib():
    """VmHWM (Linux) is the peak resident set in KiB, the figure ru_maxrss reports."""
    before = peak_rss_mb()
    vmhwm_kib = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))
    after = peak_rss_mb()
    assert before - 1 <= vmhwm_kib / 1024 <= after + 1
    assert runner_peak_rss_mb is peak_rss_mb   # the runner's status.json records the same number


def test_device_peak_is_only_reported_where_a_device_counts_it():
    cpu = torch.device("cpu")
    reset_peak(cpu)                            # nothing to reset: not an error
    assert peak_device_mb(cpu) is None         # on the CPU the runner's peak RSS is the stage's figure
