"""What the floors that group their writes share (echo_server.py --redis-grouped,
pipeline_floor.py): the shape of HEAN's command writer (web/intake.py) without its work.

`command` events are taken before python-socketio acks them, as web/socket_handlers.py takes
them, and one greenlet hands whatever waits to `write(batch)` after HEAN's own group-commit
linger (`HEAN_INTAKE_LINGER_MS`, hean/group_commit.py); `write` writes the batch and acks each
event (`send`: a raw packet, as the web process sends its acks). Import it after eventlet's
monkey patching.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from engineio import packet as eio_packet

from hean.config import get_settings
from hean.group_commit import GroupCommit
from web.intake import LINGER_WINDOW_S, MAX_BATCH

#: A `command` event taken: (its Engine.IO session, its ack id or None, its data, a dict)
Pending = tuple[str, Any, dict[str, Any]]


def send(sio: Any, eio_sid: str, text: str) -> None:
    """One Socket.IO packet, already encoded, to an Engine.IO session."""
    sio.server._send_eio_packet(eio_sid, eio_packet.Packet(eio_packet.MESSAGE, text))


def group_commands(sio: Any, write: Callable[[list[Pending]], None]) -> None:
    server = sio.server
    waiting: queue.Queue[Pending] = queue.Queue()
    group_commit = GroupCommit(get_settings().intake_linger_ms / 1000.0, LINGER_WINDOW_S)

    def writer() -> None:
        while True:
            batch = [waiting.get()]
            group_commit.wait()
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(waiting.get_nowait())
                except queue.Empty:
                    break
            write(batch)
            group_commit.done()

    default_event = server._handle_event_internal

    def handle_event(srv: Any, sid: str, eio_sid: str, data: list[Any], namespace: str, ack_id: Any) -> None:
        if data and data[0] == "command" and len(data) > 1 and isinstance(data[1], dict):
            waiting.put((eio_sid, ack_id, data[1]))
            return
        default_event(srv, sid, eio_sid, data, namespace, ack_id)

    server._handle_event_internal = handle_event
    sio.start_background_task(writer)
