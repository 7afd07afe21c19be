"""Write-only Socket.IO emitter: workers reach browsers through the Redis message queue."""

from __future__ import annotations

import functools
from typing import Any

import socketio

from hean.config import get_settings


@functools.cache
def _manager() -> socketio.RedisManager:
    settings = get_settings()
    # Same channel as the web process's manager (web/__init__.py), or messages go nowhere.
    return socketio.RedisManager(
        settings.effective_redis_url(), channel=settings.socketio_channel, write_only=True
    )


def emit(event: str, data: Any, to: str | list[str] | None = None, namespace: str = "/") -> None:
    """Send `event` to clients and rooms (sids or room names), or with `to=None` to everyone."""
    _manager().emit(event, data, namespace=namespace, room=to)
