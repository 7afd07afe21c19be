"""Group commit waits before a batch only while batches follow each other closely."""

from __future__ import annotations

import time

import pytest

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


def test_the_engine_snapshots_at_most_as_often_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """HEAN_SNAPSHOT_INTERVAL_S: while orders flow, a snapshot is due once the interval passed
    since the last (or once SNAPSHOT_EVERY commands were logged), not before."""
    from hean.config import Settings
    from workers.shard import EngineShard

    monkeypatch.setenv("HEAN_SNAPSHOT_INTERVAL_S", "0.2")
    shard = EngineShard(snapshot_interval_s=Settings().snapshot_interval_s)
    log = shard.log
    log.add("submit_order", {"client_order_id": "a"}, time.time_ns())
    assert log.committed() is False  # logged, but the interval has not passed
    time.sleep(0.25)
    log.add("submit_order", {"client_order_id": "b"}, time.time_ns())
    assert log.committed() is True
    monkeypatch.setenv("HEAN_SNAPSHOT_INTERVAL_S", "0")
    with pytest.raises(ValueError, match=r"HEAN_SNAPSHOT_INTERVAL_S|snapshot_interval_s"):
        Settings()
