"""web/fast_ws.py: the fast unmask is byte-for-byte eventlet's own, and the web installs it."""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from web.fast_ws import apply_mask

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # EventletDeprecationWarning on import
    from eventlet.websocket import RFC6455WebSocket

ORIGINAL: Any = RFC6455WebSocket.__dict__["_apply_mask"].__func__
assert ORIGINAL is not apply_mask, "the test process must not have installed the fast unmask"


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=300),
    mask=st.binary(min_size=4, max_size=4),
    cut=st.integers(min_value=0, max_value=300),
    offset=st.integers(min_value=0, max_value=11),
    as_bytearray=st.booleans(),
)
def test_same_bytes_as_eventlet(data: bytes, mask: bytes, cut: int, offset: int, as_bytearray: bool) -> None:
    length = min(cut, len(data))
    buffer = bytearray(data) if as_bytearray else data
    assert apply_mask(buffer, mask) == ORIGINAL(buffer, mask)
    assert apply_mask(buffer, mask, length, offset) == ORIGINAL(buffer, mask, length, offset)


def test_leading_zero_bytes_survive() -> None:
    assert apply_mask(b"\x00\x00\x00\x07", b"\x00\x00\x00\x00") == b"\x00\x00\x00\x07"
    assert apply_mask(b"\x01\x00", b"\x01\x00\x00\x00") == b"\x00\x00"


def test_install_swaps_it_into_eventlet_once() -> None:
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from eventlet.websocket import RFC6455WebSocket as W\n"
        "from web.fast_ws import apply_mask, install\n"
        "assert W._apply_mask is not apply_mask\n"
        "assert install() is True and W._apply_mask is apply_mask and install() is False\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
