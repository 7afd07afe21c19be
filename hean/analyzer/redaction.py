"""Redaction of everything that may leave the machine in a prompt; it fails closed.

Rules, applied in order to the text as it will be sent (the serialized prompt): PEM private
keys, known key and token shapes (OpenAI/Anthropic ``sk-``, GitHub, Slack, AWS, Google, JWT,
``Bearer``/``Basic`` credentials), credentials in URLs, values of ``key=value`` / ``key: value``
pairs whose key names a secret, values of environment variables whose names look secret, the
HEAN control token, and long high-entropy strings. After the rules ran, every known secret
value is looked for once more: if one survived, or a rule raised, `RedactionError` is raised
and nothing may be sent.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

MASK = "[REDACTED]"

#: Environment variable names that hold secrets (matched anywhere in the name).
SECRET_ENV_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSW|PWD|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE|SIGNATURE|DSN|DATABASE_URL|REDIS_URL",
    re.IGNORECASE,
)
#: Shorter values are not worth hiding (and would mask ordinary words everywhere).
MIN_SECRET_LEN = 8

#: Keys whose value is masked in `key=value`, `key: value`, `"key": "value"` (substring match,
#: so `db_password`, `X-Api-Key` and `access_token` count too).
DENY_KEYS = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "token",
    "secret",
    "authorization",
    "auth",
    "cookie",
    "session",
    "api_key",
    "api-key",
    "apikey",
    "access_key",
    "private_key",
    "credential",
    "signature",
)

_KEY_NAME = r"[\w.\-]*(?:" + "|".join(re.escape(k) for k in DENY_KEYS) + r")[\w.\-]*"
# key, an optional (JSON-escaped) quote, `=` or `:`, an optional quote, then the value up to a
# quote, backslash, whitespace or separator. The value keeps its quotes so JSON stays valid.
_KEY_VALUE = re.compile(
    r"(?P<key>\b" + _KEY_NAME + r")(?P<sep>(?:\\?[\"'])?\s*[=:]\s*(?:\\?[\"'])?)(?P<value>[^\s\"'\\,;&}\]]+)",
    re.IGNORECASE,
)

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "private_key",
        re.compile(
            r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?:.*?-----END[A-Z ]*PRIVATE KEY-----|[A-Za-z0-9+/=\s\\]*)",
            re.DOTALL,
        ),
    ),
    ("api_key", re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}")),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("google_key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{4,}")),
    ("bearer", re.compile(r"\b(?:[Bb]earer|BEARER|Basic)\s+[A-Za-z0-9._~+/=\-]{8,}")),
)

# user:password@ (or :password@) after a scheme
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s:@\"'\\]*:[^@\s/\"'\\]+@")
_HIGH_ENTROPY_CANDIDATE = re.compile(r"[A-Za-z0-9+_=\-]{20,}")
HIGH_ENTROPY_BITS = 4.0


class RedactionError(RuntimeError):
    """Redaction could not run, or a known secret survived it: the prompt must not be sent."""


def shannon_entropy(text: str) -> float:
    """Bits per character of `text`."""
    if not text:
        return 0.0
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _mask_high_entropy(match: re.Match[str]) -> str:
    word = match.group(0)
    has_digit = any(c.isdigit() for c in word)
    has_alpha = any(c.isalpha() for c in word)
    if has_digit and has_alpha and shannon_entropy(word) >= HIGH_ENTROPY_BITS:
        return MASK
    return word


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (long enough to matter)."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items() if SECRET_ENV_NAME.search(k) and len(v) >= MIN_SECRET_LEN]


Rule = Callable[[str], str]


class Redactor:
    """Masks secrets in text; `secrets` are exact values that must never survive."""

    def __init__(
        self,
        secrets: Iterable[str] = (),
        *,
        environ: Mapping[str, str] | None = None,
        extra_rules: Iterable[Rule] = (),
    ) -> None:
        self._environ = environ
        self._secrets = [s for s in secrets if s and len(s) >= 4]
        self._extra_rules = list(extra_rules)

    def known_secrets(self) -> list[str]:
        """Every exact value to mask, longest first (so a secret containing another goes whole)."""
        values = set(self._secrets) | set(secret_env_values(self._environ))
        return sorted(values, key=len, reverse=True)

    def _apply(self, text: str, known: list[str]) -> str:
        for value in known:
            for form in {value, json.dumps(value)[1:-1]}:
                text = text.replace(form, MASK)
        for _, pattern in _PATTERNS:
            text = pattern.sub(MASK, text)
        text = _URL_CREDENTIALS.sub(lambda m: m.group("scheme") + MASK + "@", text)
        text = _KEY_VALUE.sub(lambda m: m.group("key") + m.group("sep") + MASK, text)
        text = _HIGH_ENTROPY_CANDIDATE.sub(_mask_high_entropy, text)
        for rule in self._extra_rules:
            text = rule(text)
        return text

    def redact(self, text: str) -> str:
        """`text` with secrets masked; raises RedactionError when that cannot be guaranteed."""
        try:
            known = self.known_secrets()
            clean = self._apply(str(text), known)
        except Exception as exc:  # fail closed: a broken rule means nothing is sent
            raise RedactionError(f"redaction failed: {type(exc).__name__}") from None
        for value in known:
            if value in clean or json.dumps(value)[1:-1] in clean:
                raise RedactionError("a known secret survived redaction")
        return clean

    def redact_json(self, payload: object) -> object:
        """Serialize `payload`, redact the serialized text, and parse it back (fails closed)."""
        try:
            text = json.dumps(payload, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise RedactionError(f"prompt cannot be serialized: {type(exc).__name__}") from None
        clean = self.redact(text)
        try:
            return json.loads(clean)
        except ValueError:
            raise RedactionError("redaction broke the serialized prompt") from None
