"""Secrets kept in HEAN_HOME, readable by their owner only (0600): the control token
(HEAN_API_TOKEN, or one generated once into .hean/token) and the private Redis's password."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from hean.config import Settings


def write_secret(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 (also when the file existed with another mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _stored_or_new(path: Path) -> str:
    try:
        existing = path.read_text().strip()
    except OSError:
        existing = ""
    if existing:
        return existing
    secret = secrets.token_urlsafe(32)
    write_secret(path, secret + "\n")
    return secret


def ensure_token(settings: Settings) -> str:
    """The token clients must present; generated and stored with mode 0600 when none exists."""
    return settings.read_token() or _stored_or_new(settings.token_file)


def ensure_redis_password(settings: Settings) -> str:
    """The password the private Redis requires: generated once into .hean/redis.password (0600)
    and kept, like the token."""
    return _stored_or_new(settings.redis_password_file)


def token_matches(expected: str, supplied: object) -> bool:
    """Constant-time comparison; anything but a string never matches."""
    if not isinstance(supplied, str) or not expected:
        return False
    return hmac.compare_digest(supplied.encode(), expected.encode())
