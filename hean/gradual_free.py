"""Freeing a large deleted file a step at a time, so that the disk's other writers do not wait.

When the private Redis rewrites its append-only file it deletes the old one: at 1,000 single
orders/s that is about a gigabyte every seven minutes (it rewrites at 1 GB). On this machine's
ext4 disk, freeing a gigabyte's blocks at once (the last close of an unlinked file) holds up
every fsync on the filesystem for about 0.2 s, and under `appendfsync always` each order waits
for several of them: `benchmarks/bench_soak.py` showed a 267-318 ms result at each rewrite,
the interval's p99 100-180 ms, where the rest of the run stayed under 50 ms. Deleting a
separate 1 GB file on the same disk under the same load did the same (worst result 198 ms);
shrinking it by 16 MB every 25 ms (freed in 1.8 s) did not (23 ms, as without it).

`GradualFree` keeps a descriptor of each file `paths()` names (opened when first seen, every
`interval_s`), so the file's blocks outlive its deletion; once a held file has no name left
(`st_nlink == 0`, whoever deleted it), it shrinks it by `step_bytes` every `pause_s` and then
closes it. A file that still has a name is never changed. `stop()` closes every descriptor (a
file still being shrunk is then freed at once, as without this).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hean.daemon_loop import DaemonLoop

log = logging.getLogger(__name__)

#: 16 MB every 25 ms: a gigabyte freed in about 1.6 s, no step long enough to show in an fsync.
STEP_BYTES: Final = 16 * 1024 * 1024
PAUSE_S: Final = 0.025
#: How often the directory is looked at for new files: a file that lives shorter is small.
INTERVAL_S: Final = 0.5


@dataclass
class _Held:
    fd: int
    path: Path
    size: int = 0  # the size when its last name went
    steps: int = 0
    since: float = 0.0


@dataclass(frozen=True)
class Freed:
    """A file freed in `steps` steps of at most the step size, `size` bytes, over `seconds`."""

    path: Path
    size: int
    steps: int
    seconds: float


class GradualFree(DaemonLoop):
    """Holds each file `paths()` names and frees those deleted a step at a time (see module)."""

    def __init__(
        self,
        name: str,
        paths: Callable[[], Iterable[Path]],
        step_bytes: int = STEP_BYTES,
        pause_s: float = PAUSE_S,
        interval_s: float = INTERVAL_S,
    ) -> None:
        if step_bytes < 1:
            raise ValueError("step_bytes must be at least 1")
        super().__init__(f"gradual-free-{name}")
        self.name, self.paths = name, paths
        self.step_bytes, self.pause_s, self.interval_s = step_bytes, pause_s, interval_s
        self._held: dict[tuple[int, int], _Held] = {}  # by (device, inode)
        self._freeing: list[_Held] = []
        #: the files freed so far, oldest first (the last 100)
        self.freed: list[Freed] = []
        self._lock = threading.Lock()

    def start(self) -> GradualFree:
        self._start_loop()
        return self

    def stop(self) -> None:
        """Stop the thread and close every descriptor."""
        self._stop_loop()
        with self._lock:
            for held in [*self._held.values(), *self._freeing]:
                os.close(held.fd)
            self._held.clear()
            self._freeing.clear()

    def holding(self) -> list[Path]:
        """The paths of the files held (named or being freed)."""
        with self._lock:
            return [held.path for held in [*self._held.values(), *self._freeing]]

    def scan(self) -> None:
        """Hold the files named now; start freeing held ones whose last name went."""
        with self._lock:
            try:
                paths = list(self.paths())
            except OSError as exc:  # the directory is gone or unreadable: try again next turn
                log.warning("event=gradual_free_scan_failed name=%s error=%s", self.name, exc)
                paths = []
            for path in paths:
                self._hold(path)
            for key, held in list(self._held.items()):
                st = os.fstat(held.fd)
                if st.st_nlink == 0:
                    del self._held[key]
                    held.size, held.since = st.st_size, time.monotonic()
                    self._freeing.append(held)

    def _hold(self, path: Path) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in self._held:
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)  # ftruncate needs it writable
        except OSError:
            return
        ost = os.fstat(fd)
        key = (ost.st_dev, ost.st_ino)
        if key in self._held:  # replaced and replaced back between the stat and the open
            os.close(fd)
            return
        self._held[key] = _Held(fd, path)

    def step(self) -> bool:
        """Shrink each file being freed by one step (closing those emptied); True while any is
        left."""
        with self._lock:
            for held in list(self._freeing):
                try:
                    size = os.fstat(held.fd).st_size
                    if size > 0:
                        os.ftruncate(held.fd, max(0, size - self.step_bytes))
                        held.steps += 1
                        if size > self.step_bytes:
                            continue
                except OSError as exc:  # cannot shrink it: let the close free the rest
                    log.warning(
                        "event=gradual_free_failed name=%s path=%s error=%s", self.name, held.path, exc
                    )
                os.close(held.fd)
                self._freeing.remove(held)
                freed = Freed(held.path, held.size, held.steps, time.monotonic() - held.since)
                self.freed = [*self.freed[-99:], freed]
                log.info(
                    "event=file_freed name=%s path=%s bytes=%d steps=%d seconds=%.2f",
                    self.name,
                    held.path.name,
                    freed.size,
                    freed.steps,
                    freed.seconds,
                )
            return bool(self._freeing)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan()
            while self.step():
                if self._stop.wait(self.pause_s):
                    return
            self._stop.wait(self.interval_s)
