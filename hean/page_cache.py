"""Dropping the files HEAN writes once and never reads back from the kernel's page cache.

The private Redis's append-only file and the SQLite history database grow by about 1.5 KB per
order (18 and 14 MB/s at 25,000 orders/s), and the kernel keeps every page written in its page
cache. Nothing reads the AOF back until a restart, and the history writer reads the database
through SQLite's own cache. On this machine (a VM whose host backs guest memory lazily) memory the
guest has not touched for a while costs about 50 us per 4 KB page on its first use, 20 times the
usual; once a run has used the first gigabyte or so, the page cache's growth alone costs
13 ms of CPU per MB written against 1.2 ms when the written pages are dropped (measured with
`posix_fadvise(DONTNEED)` after each fdatasync). At 25,000 orders/s that made the last half of a
30 s run twice as expensive in kernel time and its latency spike (README: "Pages written once").

`drop_cached` asks the kernel to drop a file's clean pages (dirty ones stay until written back, so
nothing is lost and nothing waits); `CacheTrimmer` does so every `interval_s` for the files a
callable names, in a daemon thread. Both do nothing where `os.posix_fadvise` does not exist.
HEAN_DROP_WRITTEN_PAGES=false turns it off.

A process that has a file open under POSIX locks (SQLite does) must never open and close another
descriptor of it: closing any descriptor of a file drops every lock the process holds on it, and
a reader that then believes itself the last connection checkpoints and deletes the WAL under the
writer (SQLite's "How To Corrupt Your Database Files", 2.2). `CacheTrimmer(hold=True)` opens each
file once and keeps the descriptor until `stop()`; tests/test_page_cache.py shows both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from hean.daemon_loop import DaemonLoop

log = logging.getLogger(__name__)

#: How often `CacheTrimmer` drops: at 32 MB/s of writes, 16 MB of pages each time.
TRIM_INTERVAL_S: Final = 0.5

SUPPORTED: Final = hasattr(os, "posix_fadvise")


def drop_cached(path: str | os.PathLike[str]) -> bool:
    """Drop `path`'s clean pages from the page cache; False if it is gone or cannot be advised.
    Opens and closes the file: never on a file this process holds POSIX locks on (see above)."""
    if not SUPPORTED:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return _advise(fd)
    finally:
        os.close(fd)


def _advise(fd: int) -> bool:
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False


class CacheTrimmer(DaemonLoop):
    """Drops the cached pages of the files `paths()` names every `interval_s`, in a daemon thread,
    until `stop()`. With `hold`, each file is opened once and its descriptor kept until `stop()`
    (for a file this process also uses under POSIX locks: see the module)."""

    def __init__(
        self,
        name: str,
        paths: Callable[[], Iterable[Path]],
        interval_s: float = TRIM_INTERVAL_S,
        hold: bool = False,
    ) -> None:
        super().__init__(f"page-cache-{name}")
        self.name, self.paths, self.interval_s, self.hold = name, paths, interval_s, hold
        # held descriptors by path, with the (device, inode) each was opened on; a file replaced
        # under its path gets a new one, and the old one stays open too (closing it is the hazard)
        self._held: dict[Path, tuple[int, tuple[int, int]]] = {}
        self._retired: list[int] = []

    def start(self) -> CacheTrimmer:
        if SUPPORTED:
            self._start_loop()
        return self

    def stop(self) -> None:
        """Stop the thread; held descriptors are closed (call it once the file's locks are let go)."""
        self._stop_loop()
        held, self._held, retired, self._retired = self._held, {}, self._retired, []
        for fd in [fd for fd, _ in held.values()] + retired:
            os.close(fd)

    def trim(self) -> int:
        """Drop once now; returns how many files were advised."""
        try:
            return sum(self._drop_held(path) if self.hold else drop_cached(path) for path in self.paths())
        except OSError as exc:  # the directory listing failed: the next turn tries again
            log.warning("event=page_cache_trim_failed name=%s error=%s", self.name, exc)
            return 0

    def _drop_held(self, path: Path) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        held = self._held.get(path)
        if held is None or held[1] != (st.st_dev, st.st_ino):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
            if held is not None:
                self._retired.append(held[0])
            ost = os.fstat(fd)
            held = self._held[path] = (fd, (ost.st_dev, ost.st_ino))
        return _advise(held[0])

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.trim()
