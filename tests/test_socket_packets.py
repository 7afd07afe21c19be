"""The web process's hand-encoded ack packets are the ones python-socketio builds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from socketio.packet import ACK, EVENT, Packet

from hean.messages import ack_message
from web.socket_handlers import ack_packets

ACKS: list[dict[str, Any]] = [
    ack_message("r-1", "submit_order", True, 0.25),
    ack_message("ü ✓ \u2028", None, False, 1.0, duplicate=True),
]


def _parts(packet: str) -> tuple[str, Any]:
    head = packet[: len(packet) - len(packet.lstrip("0123456789"))]
    return head, json.loads(packet[len(head) :])


@pytest.mark.parametrize("ack", ACKS)
@pytest.mark.parametrize("ack_id", [None, 0, 7, 123456])
def test_ack_packets_are_python_socketios(ack_id: int | None, ack: dict[str, Any]) -> None:
    expected = [Packet(EVENT, namespace="/", data=["command_ack", ack]).encode()]
    if ack_id is not None:
        expected.insert(0, Packet(ACK, namespace="/", id=ack_id, data=[ack]).encode())
    packets = ack_packets(ack_id, ack)
    assert [_parts(p) for p in packets] == [_parts(str(e)) for e in expected]
