"""Loaded (HEAN_COMMAND_MODULES) by an engine worker that must die at the worst moment for a
delivery: it has popped a batch message off the engine queue and not yet recorded it as
delivered and unacknowledged. The worker SIGKILLs itself there (tests/test_engine_crash.py)."""

from __future__ import annotations

import os
import signal
from typing import Any

from hean.topology import BATCH_TASKS, ENGINE_QUEUE
from workers import transport

_record = transport.QoS._record


def _die_before_recording_a_batch(self: Any, message: Any, delivery_tag: Any, moved: Any) -> None:
    if message.headers.get("task") == BATCH_TASKS[ENGINE_QUEUE]:
        os.kill(os.getpid(), signal.SIGKILL)
    _record(self, message, delivery_tag, moved)


transport.QoS._record = _die_before_recording_a_batch  # type: ignore[method-assign]
