"""REST endpoints: the dashboard page (the health GETs live in web/health.py), and the security
headers every answer of the web process carries."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app
from flask.typing import ResponseReturnValue

blueprint = Blueprint("rest", __name__)

#: The console holds the token in its tab: it runs only its own files (no inline script or
#: style, nothing from elsewhere; 'self' covers its Socket.IO websocket), in no other site's
#: frame, and its answers are never sniffed into another type.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _secured(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def install_security_headers(app: Flask) -> None:
    """Add `SECURITY_HEADERS` to every Flask answer of `app` (a view's own value wins)."""
    app.after_request(_secured)


@blueprint.get("/")
def dashboard() -> ResponseReturnValue:
    return current_app.send_static_file("index.html")
