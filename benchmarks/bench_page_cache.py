"""Pages written once: what a file that only grows costs in CPU per MB written, with its pages
left in the page cache (the kernel's default) and with them dropped after each fdatasync
(hean.page_cache.drop_cached, what HEAN does for the private Redis's AOF and the SQLite history
database), in the same run, segment by segment as the file grows.

On a machine whose memory is all backed, both columns stay flat. On the development VM the
first gigabyte or so of page cache costs about 1.2 ms per MB and every MB after it about 13 ms:
memory the guest has not used for a while is backed by its host only on first touch. A run
that writes more than that (HEAN at 25,000 orders/s writes about 32 MB/s of AOF and database)
pays the difference in kernel time for the rest of its life unless the written pages go.

The two modes alternate per segment pair (keep first, then drop, then keep...), each in its
own file, so that a change of the host's load lands on both.

Usage: python benchmarks/bench_page_cache.py [--megabytes N] [--segment MB] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _harness import print_table

from hean.page_cache import SUPPORTED, drop_cached

SYNC_EVERY_MB = 16  # one fdatasync per 16 MB, as the AOF's are per batch


def write_segment(fd: int, path: Path, megabytes: int, drop: bool, block: bytes) -> tuple[float, float]:
    """Append `megabytes` to `fd`; returns (CPU ms per MB: user + system, wall ms per MB)."""
    start_cpu, start = os.times(), time.perf_counter()
    for written in range(1, megabytes + 1):
        os.write(fd, block)
        if written % SYNC_EVERY_MB == 0:
            os.fdatasync(fd)
            if drop:
                drop_cached(path)
    end_cpu = os.times()
    cpu = (end_cpu.user - start_cpu.user) + (end_cpu.system - start_cpu.system)
    return cpu * 1000.0 / megabytes, (time.perf_counter() - start) * 1000.0 / megabytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=2048, help="written in each mode (default 2048)")
    parser.add_argument("--segment", type=int, default=256, help="MB per measured segment (default 256)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: the temp dir)")
    args = parser.parse_args()
    if not SUPPORTED:
        print("posix_fadvise is not available here: nothing to compare")
        return 0
    block = os.urandom(1 << 20)
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="hean-pagecache-", dir=args.dir) as tmp:
        paths = {"keep": Path(tmp) / "keep.bin", "drop": Path(tmp) / "drop.bin"}
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fds = {mode: os.open(path, flags, 0o600) for mode, path in paths.items()}
        try:
            for segment in range(args.megabytes // args.segment):
                figures = {}
                for mode in ("keep", "drop") if segment % 2 == 0 else ("drop", "keep"):
                    figures[mode] = write_segment(fds[mode], paths[mode], args.segment, mode == "drop", block)
                (keep_cpu, keep_wall), (drop_cpu, drop_wall) = figures["keep"], figures["drop"]
                end = (segment + 1) * args.segment
                rows.append(
                    [
                        f"{end - args.segment}-{end}",
                        f"{keep_cpu:.2f}",
                        f"{drop_cpu:.2f}",
                        f"{keep_cpu / drop_cpu:.1f}x" if drop_cpu else "-",
                        f"{keep_wall:.2f}",
                        f"{drop_wall:.2f}",
                    ]
                )
                print(f"  {rows[-1][0]} MB: CPU ms/MB kept {rows[-1][1]}, dropped {rows[-1][2]}", flush=True)
        finally:
            for fd in fds.values():
                os.close(fd)
    print_table(
        f"a growing file, fdatasync every {SYNC_EVERY_MB} MB: pages kept in the page cache against dropped",
        ["MB (each mode)", "CPU ms/MB kept", "CPU ms/MB dropped", "ratio", "wall kept", "wall dropped"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
