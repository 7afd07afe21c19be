"""The engine shard's state publisher never loses a change: a mark made while a flush runs is
published by the next flush (the race the module-level `_mark_dirty` had)."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from workers.shard import StatePublisher

ROUNDS = 300
MARKERS = 3
MARKS_PER_THREAD = 50


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads as often as possible, so that marks land inside every flush's steps."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def last_change_published() -> bool:
    """Three threads change the engine and mark it while a fourth flushes in a loop; once they
    are done, one more flush (the next period's): was the last change published?"""
    version = [0]
    version_lock = threading.Lock()
    published: list[int] = []
    publisher = StatePublisher(lambda positions: published.append(version[0]), lambda: None)
    stop = threading.Event()

    def flush_until_stopped() -> None:
        while not stop.is_set():
            publisher.flush()

    def mark_many() -> None:
        for _ in range(MARKS_PER_THREAD):
            with version_lock:
                version[0] += 1  # the engine changed...
            publisher.mark(positions=True)  # ...and says so

    flusher = threading.Thread(target=flush_until_stopped)
    markers = [threading.Thread(target=mark_many) for _ in range(MARKERS)]
    flusher.start()
    for thread in markers:
        thread.start()
    for thread in markers:
        thread.join()
    stop.set()
    flusher.join()
    publisher.flush()
    return bool(published) and published[-1] == version[0]


def test_every_mark_is_published_even_while_a_flush_runs(busy_switching: None) -> None:
    lost = sum(not last_change_published() for _ in range(ROUNDS))
    assert lost == 0, f"the last change went unpublished in {lost} of {ROUNDS} rounds"


def test_a_failed_publish_keeps_its_marks_for_the_next_flush() -> None:
    calls: list[bool] = []

    def publish(positions: bool) -> None:
        calls.append(positions)
        if len(calls) == 1:
            raise ConnectionError("Redis away")

    publisher = StatePublisher(publish, lambda: None)
    publisher.mark(positions=True)
    with pytest.raises(ConnectionError):
        publisher.flush()
    publisher.flush()
    assert calls == [True, True]
    publisher.flush()  # nothing marked since: nothing published
    assert calls == [True, True]


def test_the_publisher_thread_sleeps_until_something_is_marked() -> None:
    """Idle, the publisher's thread makes no flush at all (it woke ten times a second for
    nothing); a mark is published at once, and marks keep coming at most every interval."""
    flushes: list[float] = []
    published: list[bool] = []

    class Counting(StatePublisher):
        def flush(self) -> None:
            flushes.append(time.monotonic())
            super().flush()

    publisher = Counting(lambda positions: published.append(positions), lambda: None)
    thread = threading.Thread(target=publisher.run, kwargs={"interval": 0.05}, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert flushes == []  # ten periods, nothing marked: never woke to flush
        publisher.mark(positions=True)
        deadline = time.monotonic() + 10
        while not published and time.monotonic() < deadline:
            time.sleep(0.005)
        assert published == [True]
        for _ in range(20):  # marks faster than the interval: flushes at most every interval
            publisher.mark()
            time.sleep(0.005)
        time.sleep(0.2)
        assert published[-1] is False and len(published) >= 2
        gaps = [b - a for a, b in itertools.pairwise(flushes)]
        assert min(gaps) >= 0.045
    finally:
        publisher.stop()
        thread.join(5)
    assert not thread.is_alive()
