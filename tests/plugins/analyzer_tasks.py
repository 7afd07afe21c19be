"""Failures on purpose for the analyzer's system test (HEAN_COMMAND_MODULES=analyzer_tasks).

In a worker: a Celery task that raises, and one that dies of a fatal signal. In the web
process: a request to /api/test-boom fails inside Flask's request handling, as a broken view
or extension would.
"""

from __future__ import annotations

import faulthandler
from typing import Any

from flask import request, request_started

from workers.app import app


def settle(balances: dict[str, float], account: str) -> float:
    return balances[account] / balances["total"]


@app.task(name="analyzer_tests.boom", ignore_result=True)
def boom() -> float:
    return settle({"total": 0.0, "alice": 5.0}, "alice")


@app.task(name="analyzer_tests.segfault", ignore_result=True, acks_late=False)
def segfault() -> None:
    faulthandler._sigsegv()


def _fail_on_test_boom(sender: Any, **_: Any) -> None:
    if request.path == "/api/test-boom":
        raise LookupError("test-boom: no route table for this request")


request_started.connect(_fail_on_test_boom, weak=False)
