"""Pages written once leave the page cache (hean.page_cache): a file's clean pages are dropped,
its dirty ones kept and its content intact; the private Redis's AOF and the SQLite history
database are trimmed while they are written, and not when HEAN_DROP_WRITTEN_PAGES is off."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import sqlalchemy

from hean.db import open_database
from hean.history import _database_trimmer
from hean.page_cache import CacheTrimmer, drop_cached
from hean.redis_server import PrivateRedis
from support import wait_for

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
PAGE = mmap.PAGESIZE


def resident(path: Path) -> float:
    """The share of `path`'s pages in the page cache (mincore(2) on a mapping that touches none)."""
    size = path.stat().st_size
    pages = (size + PAGE - 1) // PAGE
    if pages == 0:
        return 0.0
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            anchor = ctypes.c_char.from_buffer(mapping)
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            del anchor
            return sum(byte & 1 for byte in vec) / pages
        finally:
            mapping.close()


def _write(path: Path, megabytes: int, sync: bool) -> bytes:
    block = os.urandom(1 << 20)
    with open(path, "wb") as handle:
        for _ in range(megabytes):
            handle.write(block)
        handle.flush()
        if sync:
            os.fdatasync(handle.fileno())
    return block


def test_a_synced_file_leaves_the_page_cache_and_reads_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "written-once"
    block = _write(path, 16, sync=True)
    assert resident(path) > 0.9  # what the kernel keeps of a file written just now
    assert drop_cached(path)
    assert resident(path) < 0.1
    with open(path, "rb") as handle:  # read back from the disk, unchanged
        assert all(handle.read(1 << 20) == block for _ in range(16))


def test_pages_not_yet_written_back_stay_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "dirty"
    with open("/proc/sys/vm/dirty_expire_centisecs") as knob:
        if int(knob.read()) < 1000:  # the kernel would write them back before we look
            pytest.fail("this test needs dirty pages kept for 10 s (vm.dirty_expire_centisecs)")
    block = _write(path, 4, sync=False)
    assert drop_cached(path)  # starts their write-back; drops none of the dirty pages
    with open(path, "rb") as handle:
        assert all(handle.read(1 << 20) == block for _ in range(4))
    os.sync()
    assert drop_cached(path)
    assert resident(path) < 0.1


def test_a_missing_file_is_not_an_error(tmp_path: Path) -> None:
    assert drop_cached(tmp_path / "nothing-here") is False
    trimmer = CacheTrimmer("t", lambda: [tmp_path / "nothing-here"])
    assert trimmer.trim() == 0


def test_the_trimmer_drops_every_interval_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "log"
    trimmer = CacheTrimmer("t", lambda: [path], interval_s=0.05).start()
    try:
        _write(path, 8, sync=True)
        wait_for(lambda: resident(path) < 0.1, 5, "the trimmer dropping the file")
    finally:
        trimmer.stop()
    assert trimmer._thread is None
    _write(path, 8, sync=True)  # stopped: nothing drops it any more
    assert resident(path) > 0.9


_TRY_WRITE = """
import sqlite3, sys
try:
    sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")
    print("free")
except sqlite3.OperationalError as exc:
    print(exc)
"""


def _another_process_can_write(path: Path) -> bool:
    probe = subprocess.run([sys.executable, "-c", _TRY_WRITE, str(path)], capture_output=True, text=True)
    assert probe.stdout.strip() in ("free", "database is locked"), probe
    return probe.stdout.strip() == "free"


def test_a_held_file_keeps_this_processs_sqlite_locks_and_a_closed_one_would_not(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops every POSIX lock the process holds on it: the
    hazard the history writer's trimmer avoids by holding its descriptor."""
    path = tmp_path / "locked.db"
    connection = sqlite3.connect(path, isolation_level=None)  # rollback journal: locks on the file
    connection.execute("CREATE TABLE t (x)")
    trimmer = CacheTrimmer("t", lambda: [path], hold=True)
    try:
        connection.execute("BEGIN IMMEDIATE")
        assert not _another_process_can_write(path)
        assert trimmer.trim() == 1 and trimmer.trim() == 1  # opened once, kept
        assert not _another_process_can_write(path)
        assert drop_cached(path)  # opens and closes a descriptor: this process's lock is gone
        assert _another_process_can_write(path)
        connection.execute("ROLLBACK")
    finally:
        connection.close()
        trimmer.stop()


def _fill(server: PrivateRedis, megabytes: int) -> Path:
    client = redis.Redis.from_url(server.url)
    value = os.urandom(64 * 1024)
    for i in range(megabytes * 16):
        client.set(f"k{i}", value)
    assert client.get("k0") == value
    client.close()
    (aof,) = [p for p in server.aof_dir.iterdir() if p.name.endswith(".incr.aof")]
    assert aof.stat().st_size > megabytes << 20
    return aof


def test_the_private_redis_aof_leaves_the_page_cache_as_it_grows(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis", drop_written_pages=True) as server:
        aof = _fill(server, 16)
        wait_for(lambda: resident(aof) < 0.1, 5, "the AOF dropped from the page cache")
        # the data is all there: a restart reloads it from the file
        server.stop()
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.dbsize() == 16 * 16
        client.close()
        # killed and restarted (as `hean up` does): still trimmed
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        wait_for(lambda: not server.running(), 5, "the server to die")
        server.restart()
        aof = _fill(server, 16)
        wait_for(lambda: resident(aof) < 0.1, 5, "the AOF dropped after a restart")


def test_with_dropping_off_the_aof_stays_in_the_page_cache(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis", drop_written_pages=False) as server:
        aof = _fill(server, 16)
        assert resident(aof) > 0.9


def test_the_history_database_file_is_trimmed_and_its_log_kept(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'hean.db'}")
    table = sqlalchemy.Table(
        "blobs", sqlalchemy.MetaData(), sqlalchemy.Column("value", sqlalchemy.LargeBinary)
    )
    table.create(db)
    trimmer = _database_trimmer(db)
    assert trimmer is not None and trimmer.hold  # the writer's own SQLite locks stay (above)
    try:
        with db.begin() as connection:
            connection.execute(table.insert(), [{"value": os.urandom(32 * 1024)} for _ in range(512)])
        with db.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        main_file = tmp_path / "hean.db"
        assert main_file.stat().st_size > 16 << 20
        wait_for(lambda: resident(main_file) < 0.1, 5, "the database file dropped from the page cache")
        with db.connect() as connection:  # and read back from the disk
            count = sqlalchemy.select(sqlalchemy.func.count()).select_from(table)
            assert connection.execute(count).scalar() == 512
    finally:
        trimmer.stop()
        db.dispose()
    assert _database_trimmer(open_database("sqlite://")) is None  # in memory: no file to trim
