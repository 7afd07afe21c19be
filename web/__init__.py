"""The web process: Flask + Flask-SocketIO. Kept import-light so `python -m web` can
monkey-patch eventlet before anything imports socket or threading."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(*args: Any, **kwargs: Any) -> Flask:
    """Build the Flask app (see `web.app.create_app`)."""
    from web.app import create_app as _create_app

    return _create_app(*args, **kwargs)
