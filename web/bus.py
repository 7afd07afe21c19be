"""The web process's end of the Socket.IO message queue (Redis pub/sub)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import socketio
from engineio import packet as eio_packet

from hean.messages import BULK_METHOD, PACKET_METHOD


class FanOutRedisManager(socketio.RedisManager):
    """python-socketio's RedisManager that also reads the workers' bulk messages.

    A worker publishes a batch's results as one message (workers/emit.py); this listener
    decodes it once and hands its emits to python-socketio one by one, yielding to other
    greenlets between them, so a burst of 500 results never holds up a client's command.
    """

    def _listen(self) -> Iterator[Any]:
        for raw in super()._listen():
            try:
                data = self.json.loads(raw)
            except ValueError:
                continue  # not a Socket.IO message; python-socketio ignores these too
            if not isinstance(data, dict):
                continue
            if data.get("method") == PACKET_METHOD:
                self._send_packet(data)
                continue
            if data.get("method") != BULK_METHOD:
                yield data
                continue
            messages = data.get("messages")
            for message in messages if isinstance(messages, list) else ():
                if not isinstance(message, dict):
                    continue
                if message.get("method") == PACKET_METHOD:
                    self._send_packet(message)
                else:
                    yield message
                self.server.sleep(0)

    def _send_packet(self, message: dict[str, Any]) -> None:
        """Send a worker's encoded Socket.IO packet (workers/emit.py `packet_message`) to the
        room's (or rooms') participants on this server, as python-socketio's own emit does."""
        packet, room = message.get("packet"), message.get("room")
        if not (isinstance(packet, str) and packet.startswith("2")):
            return
        if not (room is None or isinstance(room, str) or (
            isinstance(room, list) and all(isinstance(r, str) for r in room)
        )):
            return
        eio_pkt = eio_packet.Packet(eio_packet.MESSAGE, packet)
        for _, eio_sid in self.get_participants("/", room):
            self.server._send_eio_packet(eio_sid, eio_pkt)
