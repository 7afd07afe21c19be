"""A background loop in a daemon thread, started once and stopped by setting an event."""

from __future__ import annotations

import threading


class DaemonLoop:
    """Runs `_run` in a daemon thread named `name` from `_start_loop()` until `_stop_loop()`,
    which sets `self._stop` (the loop waits on it between turns and returns once it is set)
    and joins the thread."""

    def __init__(self, name: str) -> None:
        self._thread_name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        raise NotImplementedError

    def _start_loop(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()

    def _stop_loop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=timeout)
