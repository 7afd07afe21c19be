"""A fast WebSocket unmask for eventlet's server.

Every frame a browser or script sends is XOR-masked (RFC 6455). eventlet's
``RFC6455WebSocket._apply_mask`` undoes that one byte at a time in Python: measured here,
0.4 µs per byte, 88 µs for a single-order command and 3.4 ms for a 100-order one, all of it
on the hub's one thread, where every other client's command waits. This does the same XOR
on two big integers (C speed, ~100x faster) and is installed by :func:`web.server.serve`.
"""

from __future__ import annotations

from typing import Any


def apply_mask(
    data: bytes | bytearray, mask: bytes | bytearray, length: int | None = None, offset: int = 0
) -> bytes:
    """``data[i] ^ mask[(offset + i) % 4]`` for the first `length` bytes (eventlet's contract)."""
    n = len(data) if length is None else length
    if n <= 0:
        return b""
    shift = offset % 4
    key = bytes(mask[shift:4]) + bytes(mask[:shift])
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data[:n], "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def install() -> bool:
    """Use :func:`apply_mask` in eventlet's WebSocket; True if it was not installed yet."""
    from eventlet.websocket import RFC6455WebSocket

    current: Any = RFC6455WebSocket.__dict__.get("_apply_mask")
    if isinstance(current, staticmethod) and current.__func__ is apply_mask:
        return False
    RFC6455WebSocket._apply_mask = staticmethod(apply_mask)  # type: ignore[method-assign]
    return True
