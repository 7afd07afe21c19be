"""Loaded (HEAN_COMMAND_MODULES) by an engine worker that must die at the worst moment for a
delivery: it has popped a batch message off the engine queue and done nothing else with it yet
(kombu's BRPOP had then taken it off the queue and recorded it nowhere). The worker SIGKILLs
itself there (tests/test_engine_crash.py)."""

from __future__ import annotations

import os
import signal
from typing import Any

from hean.topology import BATCH_TASKS, ENGINE_QUEUE
from workers import transport

_append = transport.QoS.append


def _die_right_after_popping_a_batch(self: Any, message: Any, delivery_tag: Any) -> None:
    if message.headers.get("task") == BATCH_TASKS[ENGINE_QUEUE]:
        os.kill(os.getpid(), signal.SIGKILL)
    _append(self, message, delivery_tag)


transport.QoS.append = _die_right_after_popping_a_batch  # type: ignore[method-assign]
