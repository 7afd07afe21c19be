"""web/fast_ws.py: the fast unmask is byte-for-byte eventlet's own, and the web installs it.

Run in a child process: importing eventlet here would register its fork warning in the test
process, and every later test that forks (the private Redis) would fail on it.
"""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import random, warnings
warnings.simplefilter("ignore")
from eventlet.websocket import RFC6455WebSocket as W
from web.fast_ws import apply_mask, install

original = W.__dict__["_apply_mask"].__func__
assert original is not apply_mask
rng = random.Random(7)
cases = [
    (b"", b"abcd", None, 0),
    (b"\\x00\\x00\\x00\\x07", b"\\x00" * 4, None, 0),
    (b"\\x01\\x00", b"\\x01\\x00\\x00\\x00", None, 0),
]
for _ in range(3000):
    data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
    mask = bytes(rng.getrandbits(8) for _ in range(4))
    length = rng.choice([None, rng.randrange(0, len(data) + 1)])
    cases.append((bytearray(data) if rng.random() < 0.5 else data, mask, length, rng.randrange(0, 12)))
for data, mask, length, offset in cases:
    expected = original(data, mask, length, offset)
    assert apply_mask(data, mask, length, offset) == expected, (data, mask, length, offset)
assert install() is True and W._apply_mask is apply_mask and install() is False
print("ok", len(cases))
"""


def test_same_bytes_as_eventlet_and_installed_once() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "3003"]
