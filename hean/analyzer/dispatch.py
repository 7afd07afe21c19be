"""Fire-and-forget error reporting: the failing code only enqueues; one thread builds and sends.

Building a report reads source files and redacts text, and sending it may wait on Redis: none
of that may run on a hot path or block a handler. `ReportSender.submit` costs one
`put_nowait`; when the queue is full the report is dropped (and counted), never waited for.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from hean.analyzer.models import ErrorReport
from hean.topology import ANALYZE_TASK, LLM_QUEUE

log = logging.getLogger("hean.analyzer")

Builder = Callable[[BaseException, str, list[str]], ErrorReport]
Delivery = Callable[[ErrorReport], object]


class ReportSender:
    """A bounded queue of (exception, origin, log lines) and the one daemon thread that drains it."""

    def __init__(self, build: Builder, deliver: Delivery, capacity: int = 100) -> None:
        self.build = build
        self.deliver = deliver
        self.dropped = 0
        self.sent = 0
        self._queue: queue.Queue[tuple[BaseException, str, list[str]] | ErrorReport | None] = queue.Queue(
            capacity
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, exc: BaseException, origin: str, log_lines: list[str]) -> bool:
        """Queue `exc` for a report; False (and dropped) when the queue is full."""
        self._ensure_thread()
        try:
            self._queue.put_nowait((exc, origin, log_lines))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def submit_report(self, report: ErrorReport) -> bool:
        """Queue a report built elsewhere (a crash record) for delivery; False when dropped."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hean-error-reports", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if isinstance(item, ErrorReport):
                    self.deliver(item)
                else:
                    exc, origin, lines = item
                    self.deliver(self.build(exc, origin, lines))
                self.sent += 1
            except Exception as exc:  # reporting must never raise into anything, nor loop
                log.warning("event=error_report_failed error=%s", type(exc).__name__)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far was handled (tests, shutdown)."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)


class QueueDelivery:
    """Delivery to the `llm` queue through a Celery app (handed in: hean imports no Celery app)."""

    def __init__(self, celery_app: Any) -> None:
        self.celery_app = celery_app

    def __call__(self, report: ErrorReport) -> None:
        self.celery_app.send_task(
            ANALYZE_TASK, args=[report.model_dump(mode="json")], queue=LLM_QUEUE, retry=False
        )
