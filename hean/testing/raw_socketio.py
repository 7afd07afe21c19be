"""A minimal Socket.IO v5 client over one WebSocket, reading in one loop: for load, latency
and flood tests, where python-socketio's client (a thread per incoming packet) would measure
itself instead of the server."""

from __future__ import annotations

import json

import websocket


def _is_result_of(key: object, payload: object, request_id: str) -> bool:
    return key == "command_result" and isinstance(payload, dict) and payload.get("request_id") == request_id


class RawSocketIO:
    """A minimal Socket.IO v5 client over one WebSocket, for load and latency measurement.

    python-socketio's client starts a thread per incoming event, which caps it far below what
    the server can do; this one reads frames in a single loop. Protocol: "0" open, "40" connect,
    "42[id]" event (with ack id), "43id" ack, "2"/"3" ping/pong.
    """

    def __init__(self, url: str, auth: dict[str, object] | None = None) -> None:
        self._json = json
        ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        # skip_utf8_validation: websocket-client checks UTF-8 in pure Python (a third of a loaded
        # client's CPU); decoding the text frame checks it again, in C
        self.ws = websocket.create_connection(ws_url, enable_multithread=True, skip_utf8_validation=True)
        assert self.ws.sock is not None
        self.ws.sock.setsockopt(6, 1, 1)  # TCP_NODELAY on our side too
        opening = self._frame()
        if not opening.startswith("0"):
            raise RuntimeError(f"unexpected opening packet {opening!r}")
        self.ws.send("40" + json.dumps(auth or {}))
        while True:
            reply = self._frame()
            if reply.startswith("40"):
                break
            if reply.startswith("44"):
                raise RuntimeError(f"connection refused: {reply}")
        self._next_id = 0
        self._result: object = None
        self._result_of: str | None = None

    def send(self, event: str, data: object, ack: bool = True) -> int:
        """Send an event; returns its ack id (-1 without ack)."""
        body = self._json.dumps([event, data])
        if not ack:
            self.ws.send("42" + body)
            return -1
        self._next_id += 1
        self.ws.send(f"42{self._next_id}{body}")
        return self._next_id

    def _frame(self) -> str:
        """The next frame's text (Socket.IO sends text frames)."""
        frame = self.ws.recv()
        return frame if isinstance(frame, str) else frame.decode()

    def recv(self) -> tuple[str, object, object]:
        """The next packet as (kind, id_or_event, payload): kind is "ack" or "event"."""
        while True:
            frame = self._frame()
            if frame == "2":
                self.ws.send("3")
                continue
            if frame.startswith("43"):
                digits = len(frame) - len(frame[2:].lstrip("0123456789"))
                ack_id = int(frame[2:digits])
                return "ack", ack_id, self._json.loads(frame[digits:])[0]
            if frame.startswith("42"):
                event, *rest = self._json.loads(frame[2:])
                return "event", event, rest[0] if rest else None

    def call(self, event: str, data: object, result_of: str | None = None) -> object:
        """Send and wait for the ack, skipping other packets. With `result_of`, a request id,
        its `command_result` is kept if it comes before the ack (see `wait_result`)."""
        ack_id = self.send(event, data)
        self._result, self._result_of = None, result_of
        while True:
            kind, key, payload = self.recv()
            if kind == "ack" and key == ack_id:
                return payload
            if result_of is not None and _is_result_of(key, payload, result_of):
                self._result = payload

    def wait_result(self) -> object:
        """The `command_result` of the last `call`'s `result_of`."""
        assert self._result_of is not None, "call() was not given result_of"
        while self._result is None:
            _, key, payload = self.recv()
            if _is_result_of(key, payload, self._result_of):
                return payload
        return self._result

    def close(self) -> None:
        self.ws.close()
