"""Structured logging: one event per line, key=value, never secrets."""

from __future__ import annotations

import logging
import sys

FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def configure_logging(level: str = "info") -> None:
    """Configure the root logger once for a HEAN process (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_hean", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._hean = True  # type: ignore[attr-defined]  # our mark, so it is installed once
    root.addHandler(handler)
    root.setLevel(level.upper())
