"""web/fast_ws.py: the fast unmask is byte-for-byte eventlet's own; a batch of packets goes out
as the same WebSocket frames in one write; the web installs both.

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


BATCH = """
import socket, warnings
warnings.simplefilter("ignore")
import engineio
from engineio import packet
from engineio.socket import Socket
from eventlet.websocket import RFC6455WebSocket as W
from web.fast_ws import Frames, install

writes = []

def received(send_all) -> bytes:
    a, b = socket.socketpair()
    ws = W(a, {}, 13)
    send = ws._send
    ws._send = lambda frame: (writes.append(len(frame)), send(frame))
    writes.clear()
    send_all(ws)
    a.close()
    chunks = []
    while chunk := b.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)

packets = [packet.Packet(packet.MESSAGE, data='2["command_result",{"n":%d}]' % i) for i in range(3)]
packets.append(packet.Packet(packet.MESSAGE, data=b"\\x00binary"))
packets.append(packet.Packet(packet.MESSAGE, data="x" * 70000))  # a 64-bit length frame
one_by_one = received(lambda ws: [ws.send(p.encode()) for p in packets])
assert len(writes) == len(packets)

assert install() is True and install() is False
server = engineio.Server(async_mode="threading")
sock = Socket(server, "sid1")
for p in packets:
    sock.queue.put(p)
sock.upgraded = True
drained = sock.poll()
assert len(drained) == 1, drained  # one batch for the writer
frames = drained[0].encode()
assert isinstance(frames, Frames) and len(frames) == len(packets)
assert received(lambda ws: ws.send(frames)) == one_by_one  # same bytes, in order...
assert len(writes) == 1  # ... in one write
single = packets[0].encode()
assert received(lambda ws: ws.send(single)) == received(lambda ws: ws.send(Frames([single])))

sock.queue.put(packets[0]); sock.queue.put(packets[1])
sock.upgraded = False  # long-polling keeps its packet list (its payload needs the packets)
assert [p.data for p in sock.poll()] == [packets[0].data, packets[1].data]
sock.queue.put(packets[0])
sock.upgraded = True
assert [p.data for p in sock.poll()] == [packets[0].data]  # a single packet stays as it is
print("ok")
"""


def test_a_batch_of_packets_is_the_same_frames_in_one_write() -> None:
    done = subprocess.run([sys.executable, "-c", BATCH], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"]
