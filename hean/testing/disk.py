"""What an fsync costs on the disk under a path.

Under `appendfsync always` (the private Redis) the server fsyncs its AOF once in every
event-loop turn that wrote, so its CPU per order has a floor that no change to HEAN's Python
moves: the turns that write per order times the CPU one fsync takes. `tests/test_redis_server.py`
counts the disk's cache flushes to prove that an acked write reached the disk;
`benchmarks/bench_orders.py` counts them per order and prices them with `fsync_cost`.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def disk_flushes(path: Path) -> int | None:
    """Flush requests completed by the disk under `path` (field 16 of its /sys stat, Linux
    5.5+), or None when that cannot tell fsyncs apart: no block device (tmpfs, overlay), or a
    disk without a write-back cache (an fsync then sends it no flush). The count is the whole
    disk's: every process's fsyncs on it."""
    device = os.stat(path).st_dev
    node = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    if not node.exists():
        return None
    node = node.resolve()
    if (node / "partition").exists():
        node = node.parent
    try:
        fields = (node / "stat").read_text().split()
        cache = (node / "queue" / "write_cache").read_text().strip()
    except OSError:
        return None
    return int(fields[15]) if len(fields) >= 17 and cache == "write back" else None


@dataclass(frozen=True)
class FsyncCost:
    """One append + fdatasync, as a Redis AOF write of one turn does it."""

    count: int
    cpu_us: float  # CPU (user + system) of the calling thread per append + fdatasync
    wall_p50_us: float
    wall_p99_us: float
    flushes_each: float | None  # the disk's cache flushes per fdatasync (None: not countable)

    def __str__(self) -> str:
        flushes = "" if self.flushes_each is None else f", {self.flushes_each:.2f} disk flushes each"
        return (
            f"{self.cpu_us:.0f} us of CPU per append + fdatasync (wall p50 {self.wall_p50_us:.0f} "
            f"/ p99 {self.wall_p99_us:.0f} us{flushes}; {self.count} of them)"
        )


def fsync_cost(directory: Path, count: int = 500, size: int = 256) -> FsyncCost:
    """Append `size` bytes and fdatasync, `count` times, to a new file in `directory` (removed
    after); CPU is this thread's own (RUSAGE_THREAD), so other threads do not count."""
    if count < 1:
        raise ValueError("count must be at least 1")
    payload = b"*" * size
    walls: list[float] = []
    fd, name = tempfile.mkstemp(prefix="fsync-cost-", dir=directory)
    try:
        flushes0 = disk_flushes(directory)
        usage0 = resource.getrusage(resource.RUSAGE_THREAD)
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, payload)
            os.fdatasync(fd)
            walls.append(time.perf_counter() - start)
        usage1 = resource.getrusage(resource.RUSAGE_THREAD)
        flushes1 = disk_flushes(directory)
    finally:
        os.close(fd)
        os.unlink(name)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    walls.sort()
    flushes = None if flushes0 is None or flushes1 is None else (flushes1 - flushes0) / count
    return FsyncCost(
        count=count,
        cpu_us=1e6 * cpu / count,
        wall_p50_us=1e6 * statistics.median(walls),
        wall_p99_us=1e6 * walls[min(len(walls) - 1, int(0.99 * len(walls)))],
        flushes_each=flushes,
    )
