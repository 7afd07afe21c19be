"""hean.testing.disk: the price of an fsync that bench_orders puts beside Redis's CPU per order."""

from __future__ import annotations

from pathlib import Path

import pytest

from hean.testing.disk import disk_flushes, fsync_cost


def test_fsync_cost_times_real_fdatasyncs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    cost = fsync_cost(tmp_path, count=40)
    assert cost.count == 40
    assert cost.cpu_us > 0
    assert 0 < cost.wall_p50_us <= cost.wall_p99_us
    assert list(tmp_path.iterdir()) == []
    if disk_flushes(tmp_path) is None:
        assert cost.flushes_each is None
    else:  # each fdatasync of an append reached the disk's cache flush (other processes add more)
        assert cost.flushes_each is not None and cost.flushes_each >= 1
    assert "us of CPU per append + fdatasync" in str(cost)


def test_fsync_cost_refuses_a_count_below_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        fsync_cost(tmp_path, count=0)
