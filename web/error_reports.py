"""Handler errors of the web process (REST views, Socket.IO events) go to the llm queue.

Only an enqueue happens in the handler (hean.analyzer.dispatch); the report is built and
published by the analyzer's background thread, so a failing handler is never slowed by it.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, got_request_exception


def report_handler_error(exc: BaseException, origin: str) -> None:
    """Queue `exc` for analysis (never raises)."""
    try:
        from hean.core.system.error_analyzer import reporting_analyzer
        from workers.app import app as celery_app

        reporting_analyzer(celery_app).report(exc, origin)
    except Exception:  # reporting must never add a second failure to the first
        pass


def _on_request_exception(sender: Flask, exception: BaseException, **_: Any) -> None:
    from flask import request

    report_handler_error(exception, f"rest:{request.method} {request.url_rule or request.path}")


def install(app: Flask) -> None:
    """Report unhandled exceptions of `app`'s views (Flask's got_request_exception)."""
    got_request_exception.connect(_on_request_exception, app, weak=False)
