"""The `llm` queue: error analyses, and the hooks that send every worker's errors to it.

- A Celery task that fails anywhere (`task_failure`) is reported: the signal handler only
  enqueues; a background thread builds the redacted report and publishes `analyze`
  (hean.topology.ANALYZE_TASK, queue `llm`).
- Every worker process writes fatal signals and aborts (a crash in the C++ core included) to
  a crash file of its own under HEAN_HOME/crashes (faulthandler). A file left behind by a
  process that died is sent for analysis by the next worker that starts.
- `analyze` runs in the `llm` worker; it never raises, so its own failures cannot loop.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import fcntl
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from celery.signals import celeryd_after_setup, task_failure, worker_process_init, worker_shutdown
from pydantic import ValidationError

from hean.analyzer.models import ErrorReport
from hean.analyzer.report import report_from_crash
from hean.config import get_settings
from hean.core.system.error_analyzer import ErrorAnalyzer, get_error_analyzer
from hean.core.system.error_analyzer import reporting_analyzer as analyzer_for_queue
from hean.topology import ANALYZE_TASK
from workers.app import app

log = logging.getLogger(__name__)

CRASH_HEADER = "# hean crash file"


@app.task(name=ANALYZE_TASK, ignore_result=True)
def analyze(report: dict[str, Any]) -> dict[str, Any]:
    """Analyse one error report (already redacted where it was built; redacted again as a prompt)."""
    try:
        parsed = ErrorReport.model_validate(report)
    except ValidationError as exc:
        log.warning("event=analysis_rejected reason=invalid_report errors=%d", exc.error_count())
        return {"status": "invalid_report"}
    try:
        analysis = get_error_analyzer().analyze_report_sync(parsed)
    except Exception as exc:  # never fail: a failing analysis task must not be analysed in turn
        log.warning("event=analysis_error error=%s", type(exc).__name__)
        return {"status": "error"}
    return {"id": analysis.id, "status": analysis.status, "deduplicated": analysis.deduplicated}


def reporting_analyzer() -> ErrorAnalyzer:
    """This worker's analyzer, with its reports sent to the llm queue."""
    return analyzer_for_queue(app)


@task_failure.connect
def _on_task_failure(
    sender: Any = None, exception: BaseException | None = None, traceback: Any = None, **_: Any
) -> None:
    name = str(getattr(sender, "name", "?"))
    if exception is None or name.startswith("workers.llm."):
        return
    if exception.__traceback__ is None and traceback is not None:
        with contextlib.suppress(TypeError):
            exception = exception.with_traceback(traceback)
    reporting_analyzer().report(exception, f"celery_task:{name}")


# -- crash files ---------------------------------------------------------------------------------
_crash: dict[str, Any] = {}
#: Age after which an unlocked, never renamed crash file is a dead worker's (_remove_stale_unfinished).
UNFINISHED_STALE_S = 60.0


def crash_dir() -> Path:
    return get_settings().home / "crashes"


def _abandoned(paths: Iterable[Path]) -> Iterator[tuple[Path, IO[str]]]:
    """Each of `paths` whose process is gone (its lock is free), opened and locked by this one;
    a file another worker took meanwhile is skipped."""
    for path in paths:
        if path == _crash.get("path"):
            continue
        try:
            handle = open(path, "r+", encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError:
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive
            if os.fstat(handle.fileno()).st_nlink == 0:
                continue  # another worker took it while we waited for the lock
            yield path, handle


def send_leftover_crashes(directory: Path, node: str) -> int:
    """Report every crash file whose process is gone (its lock is free); returns how many."""
    sent = 0
    for path, handle in _abandoned(sorted(directory.glob("*.crash"))):
        text = handle.read()
        body = "\n".join(line for line in text.splitlines() if not line.startswith(CRASH_HEADER))
        if body.strip():
            header = text.splitlines()[0] if text else ""
            origin = "crash:" + (header.split("node=", 1)[1].split()[0] if "node=" in header else node)
            analyzer = reporting_analyzer()
            report = analyzer.redact_report(report_from_crash(text, origin, analyzer.project_root))
            analyzer.sender.submit_report(report)
            sent += 1
            log.warning("event=crash_reported file=%s origin=%s", path.name, origin)
        path.unlink(missing_ok=True)
    _remove_stale_unfinished(directory)
    return sent


def _remove_stale_unfinished(directory: Path) -> None:
    """A worker that died between making its crash file and renaming it (install_crash_handler)
    left a `*.crash.new`: only a header, since faulthandler writes to the file once renamed.
    Removed once unlocked and older than UNFINISHED_STALE_S (a live worker renames its own
    within microseconds of making it)."""
    for path, _ in _abandoned(p for p in directory.glob("*.crash.new") if _age_s(p) >= UNFINISHED_STALE_S):
        path.unlink(missing_ok=True)
        log.info("event=crash_file_unfinished_removed file=%s", path.name)


def _age_s(path: Path) -> float:
    """Seconds since `path` was last written (0 if it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def install_crash_handler(node: str) -> Path:
    """faulthandler writes this process's fatal signals to its own crash file (idempotent per pid)."""
    if _crash.get("pid") == os.getpid():
        return Path(_crash["path"])
    directory = crash_dir()
    directory.mkdir(parents=True, exist_ok=True)
    send_leftover_crashes(directory, node)
    path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.crash"
    # Made under another name, locked, then renamed: as `*.crash` it is never unlocked while this
    # process lives, so a worker starting beside it cannot take it for a dead process's and
    # delete it (its faults would then go to a file nobody reads).
    making = path.with_name(path.name + ".new")
    handle: IO[str] = open(making, "a", encoding="utf-8")  # noqa: SIM115 - kept open for faulthandler
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while this process lives
    handle.write(f"{CRASH_HEADER} node={node} pid={os.getpid()} argv={' '.join(sys.argv[:6])}\n")
    handle.flush()
    making.rename(path)
    faulthandler.enable(file=handle, all_threads=True)
    _crash.update(pid=os.getpid(), path=path, handle=handle)
    atexit.register(remove_crash_file)
    return path


def remove_crash_file() -> None:
    """A clean exit leaves no crash file behind."""
    if _crash.get("pid") != os.getpid():
        return
    with contextlib.suppress(Exception):
        faulthandler.disable()
        _crash["handle"].close()
    Path(_crash["path"]).unlink(missing_ok=True)
    _crash.clear()


@celeryd_after_setup.connect
def _crash_handler_for_worker(sender: Any = None, **_: Any) -> None:
    try:
        install_crash_handler(str(sender or "worker"))
    except Exception as exc:  # no crash file must never stop a worker
        log.warning("event=crash_handler_unavailable error=%s", type(exc).__name__)


@worker_process_init.connect
def _crash_handler_for_child(**_: Any) -> None:
    _crash_handler_for_worker(sender=f"child-{os.getpid()}")


@worker_shutdown.connect
def _flush_reports(**_: Any) -> None:
    """Give queued reports a moment to reach the broker before the worker exits."""
    get_error_analyzer().sender.flush(timeout=3.0)
