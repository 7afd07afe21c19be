"""Error reports from exceptions and crash files, fingerprinted the way Sentry groups events.

The fingerprint is the exception type, then per in-project frame its module, function and
whitespace-normalized context line (never line numbers, so an edit elsewhere in the file
keeps the group); frames outside the project count only when no frame is in it, and the
message only when there is no stack at all.
"""

from __future__ import annotations

import collections
import hashlib
import linecache
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from hean.analyzer.models import ErrorReport, Frame
from hean.process_wide import ProcessWide

#: The project tree (the directory holding the `hean` package).
PROJECT_ROOT = Path(__file__).resolve().parents[2]

CONTEXT_LINES = 6
MAX_MESSAGE = 2_000
MAX_TRACEBACK = 12_000
LOG_LINES = 40
MAX_LOG_LINE = 400
_NOT_PROJECT = (
    "site-packages",
    "dist-packages",
    os.sep + ".venv" + os.sep,
    os.sep + "lib" + os.sep + "python",
)


def in_project(filename: str, root: Path = PROJECT_ROOT) -> bool:
    """True for a source file of this project (not the interpreter's or an installed package's)."""
    if not filename or filename.startswith("<"):
        return False
    try:
        path = Path(filename).resolve()
    except (OSError, RuntimeError):
        return False
    text = str(path)
    if any(marker in text for marker in _NOT_PROJECT):
        return False
    return path.is_relative_to(root) and path.is_file()


def _relative(filename: str, root: Path) -> str:
    try:
        return Path(filename).resolve().relative_to(root).as_posix()
    except (ValueError, OSError, RuntimeError):
        return filename


def _module_from_path(relative: str) -> str:
    return relative.removesuffix(".py").replace("/", ".").removesuffix(".__init__")


def normalize_line(line: str) -> str:
    return " ".join(line.split())


def fingerprint(exc_type: str, frames: list[Frame], message: str) -> str:
    """Sentry-style grouping hash: type + (module, function, context line) per relevant frame."""
    relevant = [f for f in frames if f.in_project] or frames
    parts = [exc_type]
    if relevant:
        parts += [f"{f.module}|{f.function}|{normalize_line(f.line)}" for f in relevant]
    else:
        # no stack: the message, with addresses and numbers that vary per occurrence removed
        parts.append(re.sub(r"0x[0-9a-fA-F]+|\d+", "<n>", message))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def source_hash(frames: Iterable[Frame], root: Path = PROJECT_ROOT) -> str:
    """Hash of the in-project files involved, as they are now (a changed file makes a new group)."""
    digest = hashlib.sha256()
    for name in sorted({f.filename for f in frames if f.in_project}):
        digest.update(name.encode() + b"\0")
        try:
            digest.update((root / name).read_bytes())
        except OSError:
            digest.update(b"<missing>")
    return digest.hexdigest()


def source_context(frames: Iterable[Frame], root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Per in-project file, the numbered lines around each of its frames (`>` marks the frame)."""
    wanted: dict[str, set[int]] = collections.defaultdict(set)
    for frame in frames:
        if frame.in_project and frame.lineno:
            wanted[frame.filename].add(frame.lineno)
    context: dict[str, str] = {}
    for name, marks in wanted.items():
        try:
            lines = (root / name).read_text(errors="replace").splitlines()
        except OSError:
            continue
        shown: set[int] = set()
        for mark in marks:
            shown.update(range(max(1, mark - CONTEXT_LINES), min(len(lines), mark + CONTEXT_LINES) + 1))
        out: list[str] = []
        previous = 0
        for number in sorted(shown):
            if previous and number != previous + 1:
                out.append("   ...")
            out.append(f"{'>' if number in marks else ' '}{number:5d} | {lines[number - 1]}")
            previous = number
        context[name] = "\n".join(out)
    return context


def frames_from_traceback(tb: TracebackType | None, root: Path = PROJECT_ROOT) -> list[Frame]:
    frames: list[Frame] = []
    linecache.checkcache()  # the context lines as the files are now, like the source excerpts
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code
        mine = in_project(code.co_filename, root)
        filename = _relative(code.co_filename, root) if mine else code.co_filename
        summary = traceback.FrameSummary(code.co_filename, lineno, code.co_name)
        frames.append(
            Frame(
                filename=filename,
                lineno=lineno,
                function=code.co_qualname if hasattr(code, "co_qualname") else code.co_name,
                module=str(frame.f_globals.get("__name__", _module_from_path(filename))),
                line=(summary.line or "").strip(),
                in_project=mine,
            )
        )
    return frames


def report_from_exception(
    exc: BaseException,
    origin: str,
    log_lines: list[str] | None = None,
    root: Path = PROJECT_ROOT,
) -> ErrorReport:
    """An ErrorReport for `exc` (not yet redacted: see hean.analyzer.dispatch)."""
    frames = frames_from_traceback(exc.__traceback__, root)
    exc_type = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ("builtins", "__main__"):
        exc_type = f"{module}.{exc_type}"
    message = _safe_str(exc)[:MAX_MESSAGE]
    text = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:]
    return ErrorReport(
        origin=origin,
        exc_type=exc_type,
        message=message,
        frames=frames,
        traceback_text=text,
        sources=source_context(frames, root),
        source_hash=source_hash(frames, root),
        log_lines=[line[:MAX_LOG_LINE] for line in (log_lines or [])[-LOG_LINES:]],
        fingerprint=fingerprint(exc_type, frames, message),
        occurred_at=time.time(),
        process=f"{Path(sys.argv[0]).name if sys.argv else ''} pid={os.getpid()}",
    )


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not break the report
        return f"<unprintable {type(exc).__name__}>"


_FAULT_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_FAULT_TITLE = re.compile(r"^Fatal Python error: (?P<what>.+)$", re.MULTILINE)


def report_from_crash(text: str, origin: str, root: Path = PROJECT_ROOT) -> ErrorReport:
    """An ErrorReport for a faulthandler dump (a fatal signal or abort in a worker)."""
    title = _FAULT_TITLE.search(text)
    what = title.group("what").strip() if title else "fatal error"
    # the current thread's stack (faulthandler: "Current thread ..." or the only "Thread ...")
    block: list[str] = []
    current = False
    for line in text.splitlines():
        if line.startswith(("Current thread", "Thread ", "Stack (most recent call first)")):
            if block and current:
                break
            current = line.startswith(("Current thread", "Stack"))
            block = []
            continue
        if _FAULT_FRAME.match(line):
            block.append(line)
    frames: list[Frame] = []
    for line in reversed(block):  # faulthandler prints the most recent call first
        match = _FAULT_FRAME.match(line)
        assert match is not None
        raw = match.group("file")
        mine = in_project(raw, root)
        filename = _relative(raw, root) if mine else raw
        lineno = int(match.group("line"))
        source = ""
        if mine:
            lines = (root / filename).read_text(errors="replace").splitlines()
            source = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        frames.append(
            Frame(
                filename=filename,
                lineno=lineno,
                function=match.group("func"),
                module=_module_from_path(filename) if mine else Path(raw).stem,
                line=source,
                in_project=mine,
            )
        )
    exc_type = f"FatalError: {what}"
    return ErrorReport(
        origin=origin,
        exc_type=exc_type,
        message=what,
        frames=frames,
        traceback_text=text[-MAX_TRACEBACK:],
        sources=source_context(frames, root),
        source_hash=source_hash(frames, root),
        log_lines=[],
        fingerprint=fingerprint(exc_type, frames, what),
        occurred_at=time.time(),
        process=origin,
    )


class RecentLogs(logging.Handler):
    """Keeps the last formatted log lines of this process, for the prompt's context."""

    def __init__(self, capacity: int = 200) -> None:
        super().__init__(level=logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record)[:MAX_LOG_LINE])
        except Exception:  # never let log capture break logging
            self.handleError(record)

    def recent(self, count: int = LOG_LINES) -> list[str]:
        return list(self.lines)[-count:]


def _attached_recent_logs() -> RecentLogs:
    capture = RecentLogs()
    logging.getLogger().addHandler(capture)
    return capture


_recent_logs = ProcessWide(_attached_recent_logs)


def recent_logs() -> RecentLogs:
    """This process's log capture, attached to the root logger on first use."""
    return _recent_logs.get()
