"""What processes use, read from outside with psutil: CPU seconds and resident memory, by name.

Shared by the stress test and the benchmarks, which read them before and after a fixed amount
of work (a process that is gone reads as NaN seconds, or 0 bytes)."""

from __future__ import annotations

import psutil


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far (not its children)."""
    seconds = {}
    for name, pid in pids.items():
        try:
            seconds[name] = float(sum(psutil.Process(pid).cpu_times()[:2]))
        except psutil.Error:
            seconds[name] = float("nan")
    return seconds


def rss(pids: dict[str, int]) -> dict[str, int]:
    """Each process's resident set size in bytes."""
    sizes = {}
    for name, pid in pids.items():
        try:
            sizes[name] = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            sizes[name] = 0
    return sizes
