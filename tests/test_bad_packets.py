"""A malformed Socket.IO packet closes its connection with one log line (web/packets.py), and a
well-formed one decodes as python-socketio's own Packet decodes it. Against the real web process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import websocket
from socketio import packet

from support import REPO_ROOT, wait_for
from web.packets import MAX_ATTACHMENTS, SIGN_IN_S, BadPacket, CheckedPacket

WELL_FORMED = [
    "0",
    '0{"token":"t","operator":true}',
    "0/admin,",
    "1",
    '2["command",{"command":"start","params":{},"request_id":"r-1"}]',
    '27["command",{"command":"start"}]',
    '2/admin,12["x",1,"ü ✓ \\u2028"]',
    "3" + "5" + '[{"ok":true}]',
    '51-["blob",{"_placeholder":true,"num":0}]',
    '61-5[{"_placeholder":true,"num":0}]',
]

MALFORMED = {
    "not JSON": '2["command",{',
    "no data in an event": "2",
    "an event that is an object": '2{"a":1}',
    "an event without a name": "2[5]",
    "an ack that is not a list": '31{"a":1}',
    "a client's CONNECT_ERROR": '4{"message":"x"}',
    "an unknown packet type": "9[]",
    "too many attachments": f'5{MAX_ATTACHMENTS + 1}-["blob",{{"_placeholder":true,"num":0}}]',
    "nested deeper than the decoder goes": '2["command",' + "[" * 5000 + "]" * 5000 + "]",
}


@pytest.mark.parametrize("encoded", WELL_FORMED)
def test_a_well_formed_packet_decodes_as_python_socketios(encoded: str) -> None:
    mine, theirs = CheckedPacket(encoded_packet=encoded), packet.Packet(encoded_packet=encoded)
    fields = ("packet_type", "namespace", "id", "data", "attachment_count")
    assert [getattr(mine, f) for f in fields] == [getattr(theirs, f) for f in fields]


@pytest.mark.parametrize("encoded", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_packet_is_refused_with_a_reason(encoded: str) -> None:
    with pytest.raises(BadPacket) as refused:
        CheckedPacket(encoded_packet=encoded)
    assert str(refused.value) and "Traceback" not in str(refused.value)


@contextmanager
def _session(system: dict[str, Any], token: str | None) -> Iterator[websocket.WebSocket]:
    """A raw Engine.IO websocket session, signed in to Socket.IO when `token` is given."""
    url = str(system["url"]).replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ws = websocket.create_connection(url, timeout=10)
    try:
        assert ws.recv().startswith("0{")  # Engine.IO's open
        if token is not None:
            ws.send("40" + json.dumps({"token": token}))
            assert ws.recv().startswith("40{")
        yield ws
    finally:
        ws.shutdown()  # the socket itself, also when the server closed the session


def _closed_by_server(ws: websocket.WebSocket, within: float = 10.0) -> list[str]:
    """Frames up to the close: the server ends the session (Engine.IO CLOSE, "1")."""
    frames: list[str] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            frame = ws.recv()
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            return frames
        except (websocket.WebSocketTimeoutException, TimeoutError):
            continue  # nothing yet: until the deadline
        if frame == "2":  # Engine.IO ping
            ws.send("3")
            continue
        if not frame:
            return frames
        frames.append(frame)
    raise AssertionError(f"the server did not close the session; it sent {frames}")


def _web_log(system: dict[str, Any]) -> str:
    (web,) = [p for p in system["processes"] if p.name.startswith("web")]  # restart_web names it web-*
    return str(web.log_text())


@pytest.mark.parametrize("signed_in", [False, True], ids=["anyone", "signed-in"])
def test_the_web_process_closes_a_connection_that_sends_a_malformed_packet(
    system: dict[str, Any], signed_in: bool
) -> None:
    before = _web_log(system)
    for encoded in MALFORMED.values():
        with _session(system, str(system["token"]) if signed_in else None) as ws:
            # the bad packet, then frames that would be fine: nothing after the bad one is handled
            ws.send("4" + encoded)
            ws.send("4" + encoded)
            ws.send('42["command",{"command":"start","params":{},"request_id":"after-bad"}]')
            frames = _closed_by_server(ws)
        assert frames == ["1"], (encoded[:40], frames)

    def logged() -> list[str]:
        added = _web_log(system)[len(before) :]
        return [line for line in added.splitlines() if "event=bad_packet" in line]

    wait_for(lambda: len(logged()) >= len(MALFORMED), 10, "a bad_packet line per connection")
    time.sleep(0.5)  # anything more would come now
    added = _web_log(system)[len(before) :]
    lines = logged()
    # one line per connection, naming the sender's address and what was wrong; no traceback
    assert len(lines) == len(MALFORMED), lines
    assert all("remote=127.0.0.1" in line and "action=disconnect" in line for line in lines), lines
    assert "Traceback" not in added and "handler error" not in added, added[-3000:]


def test_connections_that_send_well_formed_packets_are_unaffected(system: dict[str, Any]) -> None:
    token = str(system["token"])
    with _session(system, token) as bad, _session(system, token) as good:
        bad.send('42["command",{')
        assert _closed_by_server(bad) == ["1"]
        request_id = "good-" + uuid.uuid4().hex
        body = {"command": "list_commands", "params": {}, "request_id": request_id}
        good.send("421" + json.dumps(["command", body]))
        frames = []
        while len(frames) < 2:
            frame = good.recv()
            if frame != "2":
                frames.append(frame)
    ack = json.loads(frames[0][3:])[0]
    assert frames[0].startswith("431[") and ack["request_id"] == request_id and ack["accepted"] is True


def test_the_socketio_libraries_log_through_heans_handler_alone() -> None:
    """python-socketio and python-engineio add a bare handler of their own to a logger whose
    level is unset, which wrote each of their errors twice; create_app() sets the levels."""
    probe = """
import logging
from hean.logs import configure_logging
from web.app import create_app
configure_logging()
create_app(async_mode="threading")
for name in ("socketio.server", "engineio.server"):
    logger = logging.getLogger(name)
    print(name, len(logger.handlers), logging.getLevelName(logger.level))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split("\n")[:2] == ["socketio.server 0 ERROR", "engineio.server 0 ERROR"], out.stdout


def test_a_session_that_does_not_sign_in_is_closed(system: dict[str, Any]) -> None:
    """Never signed in, or refused: closed SIGN_IN_S after it opened, though it answers pings;
    a signed-in session opened with them stays."""
    before = _web_log(system)
    started = time.monotonic()
    with (
        _session(system, None) as silent,
        _session(system, None) as refused,
        _session(system, str(system["token"])) as signed_in,
    ):
        refused.send('40{"token":"not-the-token"}')
        assert refused.recv().startswith("44{")  # CONNECT_ERROR: refused, the session still open
        for ws in (silent, refused):
            assert _closed_by_server(ws, within=SIGN_IN_S + 10) == ["1"]  # answering every ping
        waited = time.monotonic() - started
        assert SIGN_IN_S - 1 <= waited <= SIGN_IN_S + 10, waited
        body = {"command": "list_commands", "params": {}, "request_id": "signed-" + uuid.uuid4().hex}
        signed_in.send("421" + json.dumps(["command", body]))
        frame = signed_in.recv()
        while frame == "2":
            signed_in.send("3")
            frame = signed_in.recv()
        assert frame.startswith("431[") and json.loads(frame[3:])[0]["accepted"] is True
    wait_for(lambda: _web_log(system)[len(before) :].count("event=sign_in_timeout") >= 2, 10, "two log lines")
    assert _web_log(system)[len(before) :].count("event=sign_in_timeout") == 2
