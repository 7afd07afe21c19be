"""The control token: HEAN_API_TOKEN, or one generated once and kept in .hean/token (0600)."""

from __future__ import annotations

import hmac
import os
import secrets

from hean.config import Settings


def ensure_token(settings: Settings) -> str:
    """The token clients must present; generated and stored with mode 0600 when none exists."""
    existing = settings.read_token()
    if existing:
        return existing
    settings.home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(settings.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(settings.token_file, 0o600)
    return token


def token_matches(expected: str, supplied: object) -> bool:
    """Constant-time comparison; anything but a string never matches."""
    if not isinstance(supplied, str) or not expected:
        return False
    return hmac.compare_digest(supplied.encode(), expected.encode())
