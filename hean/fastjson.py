"""JSON for the hot paths: orjson where it gives the standard library's values, the standard
library everywhere else.

A drop-in `json` module for python-socketio and python-engineio (their ``json=`` option), for
the workers' broker messages (workers/transport.py) and for HEAN's own encoders. orjson reads
and writes compact JSON several times faster. Writing: what it refuses (integers beyond 64
bits, other keyword arguments) the standard library writes exactly as before; one difference,
a non-finite float (NaN, Infinity) is written as ``null``, which every JSON parser reads, where
the standard library writes ``NaN``, which browsers' ``JSON.parse`` refuses. Reading: orjson
would read an integer beyond 64 bits as a float, so text with a run of 19 or more digits is
read by the standard library (exact integers), and so is anything orjson refuses (NaN,
Infinity, lone surrogates), with the standard library's value or error. Profiled at 1,000
single orders/s, JSON was a tenth of the web process's CPU, and reading a quarter of the engine
worker's in 100-order commands.
"""

from __future__ import annotations

import json as _json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def fragment(encoded: bytes | str) -> Any:
    """JSON text already encoded, to be written as it is where it sits in a value given to
    `dumps` (an orjson.Fragment): results the C++ core wrote are not decoded and encoded again.
    Only `dumps` by orjson takes it; the standard library refuses it, as it refuses any object it
    does not know, so a value holding one must not need the fallback (no integer beyond 64 bits)."""
    return orjson.Fragment(encoded)


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps(obj, separators=(",", ":"))`, or `json.dumps(obj, **kwargs)` when other
    options are asked for (or orjson refuses `obj`)."""
    if kwargs.get("separators", (",", ":")) == (",", ":") and kwargs.keys() <= {"separators"}:
        try:
            return orjson.dumps(obj, option=_OPTIONS).decode()
        except (orjson.JSONEncodeError, TypeError):
            pass
        kwargs["separators"] = (",", ":")
    return _json.dumps(obj, **kwargs)


def dumpb(obj: Any) -> bytes:
    """`dumps(obj).encode()`, without the detour through str: for text that goes to Redis as it is
    (redis-py would encode a str again)."""
    try:
        return orjson.dumps(obj, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        return _json.dumps(obj, separators=(",", ":")).encode()


#: A run of this many digits may be an integer orjson does not hold exactly (2**63 has 19).
#: Found by mapping digits to 1 and the rest to 0 (bytes.translate) and searching for the
#: run: a regular expression took 30 times as long as orjson's parse itself.
_DIGIT_MAP = bytes(1 if 0x30 <= i <= 0x39 else 0 for i in range(256))
_LONG_RUN = b"\x01" * 19


def loads(data: str | bytes | bytearray, **kwargs: Any) -> Any:
    """`json.loads(data, **kwargs)`, by orjson when that gives the same value."""
    if not kwargs and isinstance(data, str | bytes):
        try:
            raw = data.encode() if isinstance(data, str) else data
        except UnicodeEncodeError:  # a lone surrogate: the standard library reads it
            raw = None
        if raw is not None and raw.translate(_DIGIT_MAP).find(_LONG_RUN) < 0:
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass  # the standard library's own answer: a value (NaN, Infinity) or its error
    return _json.loads(data, **kwargs)
