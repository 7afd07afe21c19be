"""Group commit waits before a batch only while batches follow each other closely."""

from __future__ import annotations

import time

from hean.group_commit import GroupCommit


def test_a_first_or_isolated_batch_never_waits() -> None:
    group = GroupCommit(0.004, 0.010)
    assert group.wait() == 0.0  # nothing ran before
    group.done()
    time.sleep(0.030)
    assert group.wait() == 0.0  # the previous batch ended long ago


def test_a_batch_right_after_another_waits_for_the_work_behind_it() -> None:
    slept: list[float] = []
    group = GroupCommit(0.004, 0.010, sleep=slept.append)
    group.done()
    assert group.wait() == 0.004 and slept == [0.004]
    real = GroupCommit(0.004, 0.010)
    real.done()
    started = time.perf_counter()
    real.wait()
    assert time.perf_counter() - started >= 0.004


def test_no_wait_when_turned_off() -> None:
    group = GroupCommit(0.0, 0.010)
    group.done()
    assert group.wait() == 0.0


def test_the_engine_shard_waits_as_configured() -> None:
    from workers.shard import LINGER_WINDOW_S, EngineShard

    shard = EngineShard(linger_s=0.004)
    assert (shard.group_commit.linger_s, shard.group_commit.window_s) == (0.004, LINGER_WINDOW_S)
