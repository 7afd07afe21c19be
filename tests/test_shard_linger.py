"""The engine shard's group commit: it waits before a batch only while batches follow each
other closely, never for an isolated command."""

from __future__ import annotations

import time

from workers.shard import LINGER_WINDOW_S, EngineShard


def test_a_first_or_isolated_batch_never_waits() -> None:
    shard = EngineShard(linger_s=0.004)
    assert shard.linger() == 0.0  # nothing ran before
    shard.batch_done()
    time.sleep(LINGER_WINDOW_S * 3)
    assert shard.linger() == 0.0  # the previous batch ended long ago


def test_a_batch_right_after_another_waits_for_the_commands_behind_it() -> None:
    shard = EngineShard(linger_s=0.004)
    shard.batch_done()
    started = time.perf_counter()
    assert shard.linger() == 0.004
    assert time.perf_counter() - started >= 0.004


def test_no_linger_when_turned_off() -> None:
    shard = EngineShard(linger_s=0.0)
    shard.batch_done()
    assert shard.linger() == 0.0
