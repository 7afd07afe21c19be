"""REST endpoints: the dashboard page (the health GETs live in web/health.py)."""

from __future__ import annotations

from flask import Blueprint, current_app
from flask.typing import ResponseReturnValue

blueprint = Blueprint("rest", __name__)


@blueprint.get("/")
def dashboard() -> ResponseReturnValue:
    return current_app.send_static_file("index.html")
