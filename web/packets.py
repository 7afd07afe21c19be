"""Socket.IO traffic from clients, checked before python-socketio acts on it: malformed packets
(`install`), and sessions that never sign in (`close_unsigned`).

Why: python-socketio lets a malformed packet raise out of its message handler (a JSON error, a
nesting deeper than the decoder's recursion, an event without a name, a client's
CONNECT_ERROR), and python-engineio logs each with its whole traceback. Any client can send one,
signed in or not: it costs the web process a traceback's formatting and the log about 3 KB per
14-byte frame, and the sender is never told. Here such a packet is one warning line
(`event=bad_packet`) and the connection is closed, as the reference JavaScript server closes a
connection whose packet it cannot parse; a well-formed packet is decoded exactly as before
(the checks add about 0.4 us to a 4 us decode of a `submit_order` event, timed with timeit).
`tests/test_bad_packets.py` sends them to a running web process.

An Engine.IO session is open before its client signs in to Socket.IO, and python-socketio
keeps one that never does (or was refused) for as long as its client answers the pings: about
a file descriptor, a green thread and its queue each, for anyone who can reach the port. Such a
session is closed `SIGN_IN_S` seconds after it opened.
"""

from __future__ import annotations

import logging
from typing import Any

import socketio
from socketio import packet

log = logging.getLogger(__name__)

#: Binary attachments one packet may announce: HEAN's events carry none, and python-socketio
#: keeps every later message of the connection as an attachment until the count is reached.
MAX_ATTACHMENTS = 16

#: Seconds a client has, from opening its Engine.IO session, to sign in to Socket.IO (its
#: CONNECT with the token, which clients send at once); then the session is closed.
SIGN_IN_S = 10.0

_DECODE_ERRORS = (ValueError, TypeError, RecursionError, UnicodeError)
#: What a client may send: never CONNECT_ERROR, which only a server sends.
_FROM_CLIENTS = frozenset(
    {packet.CONNECT, packet.DISCONNECT, packet.EVENT, packet.ACK, packet.BINARY_EVENT, packet.BINARY_ACK}
)


class BadPacket(ValueError):
    """A client's packet that python-socketio cannot act on; the message says why."""


class CheckedPacket(packet.Packet):
    """python-socketio's packet, whose decoding refuses what its server would fail on later."""

    def decode(self, encoded_packet: Any) -> int:
        try:
            attachments = super().decode(encoded_packet)
        except _DECODE_ERRORS as exc:
            raise BadPacket(f"undecodable: {type(exc).__name__}: {str(exc)[:120]}") from None
        kind = self.packet_type
        if kind not in _FROM_CLIENTS:
            raise BadPacket(f"packet type {str(kind)[:8]!r} is not one a client sends")
        if attachments > MAX_ATTACHMENTS:
            raise BadPacket(f"{attachments} binary attachments announced; at most {MAX_ATTACHMENTS}")
        data = self.data
        if kind in (packet.EVENT, packet.BINARY_EVENT) and not (
            isinstance(data, list) and data and isinstance(data[0], str)
        ):
            raise BadPacket("an event must be a list whose first item is its name")
        if kind in (packet.ACK, packet.BINARY_ACK) and not isinstance(data, list):
            raise BadPacket("an ack must be a list")
        return int(attachments)


def install(server: socketio.Server) -> None:
    """Close the connection of a client whose packet `CheckedPacket` refuses, with one log line.

    The server must have been built with ``serializer=CheckedPacket``."""
    if server.packet_class is not CheckedPacket:
        raise TypeError("the Socket.IO server must be built with serializer=CheckedPacket")
    eio = server.eio
    handle = eio.handlers["message"]  # python-socketio's _handle_eio_message

    def on_message(eio_sid: str, data: Any) -> None:
        # A closed session's reader still hands over the frames it had read; python-socketio
        # would fail on them (its session is gone), so they are dropped, as the client was told.
        if eio_sid not in eio.sockets:
            return
        try:
            handle(eio_sid, data)
        except BadPacket as exc:
            # not the session id: with the polling transport it is all a request needs to join
            remote = server.environ.get(eio_sid, {}).get("REMOTE_ADDR", "?")
            log.warning(
                "event=bad_packet remote=%s bytes=%d error=%s action=disconnect", remote, len(data), exc
            )
            eio.disconnect(eio_sid)

    eio.on("message", on_message)


def close_unsigned(server: socketio.Server, seconds: float = SIGN_IN_S) -> None:
    """Close every Engine.IO session of `server` not signed in to Socket.IO `seconds` after it
    opened (one line each: `event=sign_in_timeout`)."""
    eio = server.eio
    handle = eio.handlers["connect"]  # python-socketio's _handle_eio_connect

    def on_connect(eio_sid: str, environ: dict[str, Any], *args: Any) -> Any:
        opened = handle(eio_sid, environ, *args)
        if opened is not False:
            server.start_background_task(expire, eio_sid, environ.get("REMOTE_ADDR", "?"))
        return opened

    def expire(eio_sid: str, remote: str) -> None:
        server.sleep(seconds)
        if eio_sid in eio.sockets and server.manager.sid_from_eio_sid(eio_sid, "/") is None:
            log.info("event=sign_in_timeout remote=%s seconds=%g action=disconnect", remote, seconds)
            eio.disconnect(eio_sid)

    eio.on("connect", on_connect)
