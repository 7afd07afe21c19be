"""hean.gradual_free: a deleted file's blocks are freed a step at a time; a named file is never
touched. Real files, and a real private Redis whose AOF rewrite deletes the old files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from hean.gradual_free import GradualFree
from hean.redis_server import PrivateRedis
from support import wait_for

MB = 1024 * 1024


def _file(path: Path, megabytes: int) -> bytes:
    data = os.urandom(megabytes * MB)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return data


def _blocks_of_deleted(path: Path) -> list[int]:
    """The allocated bytes of each file this process holds open that was `path` and has no name
    left (read through /proc, without touching the descriptors)."""
    sizes = []
    for fd_name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd_name}")
            if target == f"{path} (deleted)":
                sizes.append(os.stat(f"/proc/self/fd/{fd_name}").st_blocks * 512)
        except OSError:
            continue
    return sizes


def test_a_deleted_file_is_freed_in_steps_and_then_closed(tmp_path: Path) -> None:
    big = tmp_path / "big.aof"
    _file(big, 40)
    freer = GradualFree("test", lambda: list(tmp_path.iterdir()), step_bytes=8 * MB, pause_s=0.01)
    freer.scan()
    assert freer.holding() == [big]
    big.unlink()
    freer.scan()  # its last name went: held until freed, its blocks still allocated
    assert freer.holding() == [big]
    assert max(_blocks_of_deleted(big)) >= 40 * MB
    seen = []
    while freer.step():
        seen.append(max(_blocks_of_deleted(big), default=0))
    # 40 MB in steps of 8 MB: four partial sizes, each 8 MB below the last, then closed
    assert seen == sorted(seen, reverse=True) and len(seen) == 4
    assert 8 * MB <= seen[-1] <= 9 * MB
    assert freer.holding() == []
    (freed,) = freer.freed
    assert (freed.path, freed.size, freed.steps) == (big, 40 * MB, 5)


def test_a_file_that_keeps_its_name_is_never_changed(tmp_path: Path) -> None:
    kept = tmp_path / "kept.aof"
    data = _file(kept, 3)
    freer = GradualFree("test", lambda: list(tmp_path.iterdir()), step_bytes=MB)
    for _ in range(5):
        freer.scan()
        assert not freer.step()
    assert kept.read_bytes() == data
    # renamed (as a rewrite renames its new base into place): still named, still whole
    moved = tmp_path / "moved.aof"
    kept.rename(moved)
    freer.scan()
    assert not freer.step()
    assert moved.read_bytes() == data
    freer.stop()
    assert moved.read_bytes() == data and freer.freed == []


def test_a_file_replaced_under_its_name_frees_the_old_and_keeps_the_new(tmp_path: Path) -> None:
    path = tmp_path / "a.aof"
    _file(path, 2)
    freer = GradualFree("test", lambda: [path], step_bytes=MB)
    freer.scan()
    new = tmp_path / "new.tmp"
    data = _file(new, 1)
    new.replace(path)  # the old inode loses its last name
    freer.scan()
    while freer.step():
        pass
    assert [(f.size, f.steps) for f in freer.freed] == [(2 * MB, 2)]
    assert path.read_bytes() == data
    assert freer.holding() == [path]  # the new file, held from this scan on
    freer.stop()
    assert freer.holding() == [] and path.read_bytes() == data


def test_stop_closes_a_file_still_being_freed(tmp_path: Path) -> None:
    big = tmp_path / "big.aof"
    _file(big, 4)
    freer = GradualFree("test", lambda: list(tmp_path.iterdir()), step_bytes=MB)
    freer.scan()
    big.unlink()
    freer.scan()
    assert freer.step()
    freer.stop()
    assert freer.holding() == [] and _blocks_of_deleted(big) == []


def test_an_unreadable_directory_is_tried_again(tmp_path: Path) -> None:
    calls = []

    def paths() -> list[Path]:
        calls.append(1)
        if len(calls) == 1:
            raise FileNotFoundError("gone")
        return list(tmp_path.iterdir())

    (tmp_path / "x.aof").write_bytes(b"x")
    freer = GradualFree("test", paths)
    freer.scan()
    assert freer.holding() == []
    freer.scan()
    assert freer.holding() == [tmp_path / "x.aof"]
    freer.stop()


def test_the_step_must_be_positive() -> None:
    with pytest.raises(ValueError, match="step_bytes"):
        GradualFree("test", list, step_bytes=0)


def test_the_private_redis_frees_the_files_its_rewrite_deletes_in_steps(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        value = os.urandom(64 * 1024)
        for i in range(40 * 16):  # 40 MB of AOF, the same 16 keys written over and over
            client.set(f"k{i % 16}", value)
        wait_for(
            lambda: any(p.name.endswith(".incr.aof") for p in server._freer.holding()), 5, "the AOF held"
        )
        client.bgrewriteaof()
        wait_for(lambda: any(f.size >= 40 * MB for f in server._freer.freed), 20, "the old AOF freed")
        (old,) = [f for f in server._freer.freed if f.size >= 40 * MB]
        assert old.path.name.endswith(".incr.aof") and old.steps >= 3
        # the rewritten files are whole: a restart reads every key back
        client.set("after", b"rewrite")
        client.close()
        server.stop()
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.dbsize() == 17 and client.get("k3") == value and client.get("after") == b"rewrite"
        client.close()
    # stopped with the server: its thread joined, nothing held
    assert server._freer._thread is None and server._freer.holding() == []
