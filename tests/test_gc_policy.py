"""hean.gc_policy: a ready process freezes what it loaded, and still frees what it makes later."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import gc, logging, sys, weakref

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from hean.gc_policy import freeze_startup_objects


class Node:
    pass


def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


kept = [Node() for _ in range(1000)]  # alive at the freeze: frozen
before = cycle()  # garbage made while starting up
frozen = freeze_startup_objects("test")
print("frozen", frozen, gc.get_freeze_count())
print("startup garbage freed", before() is None)
after = cycle()  # garbage made while serving
gc.collect()
print("later garbage freed", after() is None)
print("kept frozen", gc.is_tracked(kept[0]) and gc.get_freeze_count() >= len(kept))
"""


def test_freezing_keeps_collecting_what_the_process_makes_later() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    frozen = re.search(r"^frozen (\d+) (\d+)$", out, re.M)
    assert frozen and int(frozen[1]) == int(frozen[2]) > 1000, out
    assert "startup garbage freed True" in out
    assert "later garbage freed True" in out
    assert "kept frozen True" in out
    line = re.search(
        r"event=gc_frozen process=test objects=(\d+) "
        r"full_collection_ms_before=([\d.]+) full_collection_ms_after=([\d.]+)",
        out,
    )
    assert line and int(line[1]) == int(frozen[1]), out
