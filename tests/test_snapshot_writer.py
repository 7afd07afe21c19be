"""workers.shard.SnapshotWriter: snapshots land in log order, from either thread, each with
the trim of the log entries it holds, compressed; restore_engine reads them, and the
uncompressed ones written before (real Redis); `hean downgrade-snapshot` rewrites one for
versions before snapshot format 2."""

from __future__ import annotations

import json
import time
import zlib

import pytest
import redis

from hean import _core, cli
from hean.engine import EngineState, TradingEngine
from hean.snapshot_store import downgrade_snapshot
from workers.shard import (
    CORRUPT_SNAPSHOT_KEY,
    LOG_KEY,
    SNAPSHOT_KEY,
    SNAPSHOT_LOST_REASON,
    EngineShard,
    Snapshot,
    SnapshotWriter,
    replay_entry,
    restore_engine,
)


def _log(client: redis.Redis, ids: list[str]) -> None:
    for entry_id in ids:
        client.xadd(LOG_KEY, {"cmd": "noop"}, id=entry_id)


def _stored(client: redis.Redis) -> dict[bytes, bytes]:
    """The stored snapshot, its data uncompressed."""
    stored: dict[bytes, bytes] = client.hgetall(SNAPSHOT_KEY)  # type: ignore[assignment]
    if stored:
        assert stored.pop(b"encoding") == b"zlib"
        stored[b"data"] = zlib.decompress(stored[b"data"])
    return stored


def _until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_a_snapshot_written_soon_lands_and_trims_what_it_holds(redis_client: redis.Redis) -> None:
    _log(redis_client, ["5-0", "5-1", "9-0"])
    writer = SnapshotWriter(lambda: redis_client)
    writer.write_soon(Snapshot(b"state after 5-1", "5-1", paused=True))
    _until(lambda: _stored(redis_client))
    assert _stored(redis_client) == {b"data": b"state after 5-1", b"log_id": b"5-1", b"paused": b"1"}
    # the entry after it stays (the trim is approximate: whole stream nodes go, or none)
    assert [entry_id for entry_id, _ in redis_client.xrange(LOG_KEY)][-1] == b"9-0"
    writer.write_soon(Snapshot(b"state after 9-0", "9-0", paused=False))
    _until(lambda: redis_client.xlen(LOG_KEY) == 0)
    assert _stored(redis_client)[b"log_id"] == b"9-0"
    assert redis_client.xlen(LOG_KEY) == 0


def test_an_older_snapshot_never_replaces_a_newer_one(redis_client: redis.Redis) -> None:
    _log(redis_client, ["5-0", "7-0", "9-0"])
    writer = SnapshotWriter(lambda: redis_client)
    assert writer.write(Snapshot(b"after 7-0", "7-0", paused=False))
    assert not writer.write(Snapshot(b"after 5-0", "5-0", paused=False))
    assert _stored(redis_client)[b"data"] == b"after 7-0"
    # one handed to the thread, then a newer written at once (shutdown, a control command):
    # whichever the thread gets to first, the newer one stays
    for _ in range(20):
        writer.write_soon(Snapshot(b"after 8-0", "8-0", paused=False))
        writer.write(Snapshot(b"after 9-0", "9-0", paused=False))
    time.sleep(0.2)
    _until(lambda: writer._pending is None)
    with writer._write_lock:  # the thread's last write, if any, is over
        assert _stored(redis_client)[b"data"] == b"after 9-0"
    assert redis_client.xlen(LOG_KEY) == 0


def _engine_with_orders() -> TradingEngine:
    engine = TradingEngine(risk_limits={"max_orders_per_second": 0})
    engine.update_market("BTCUSDT", "50000", "50001", "50000.5")
    engine.start()
    for i in range(50):
        engine.submit_order(client_order_id=f"snap-{i}", symbol="BTCUSDT", side="BUY", quantity="0.001")
    return engine


def _unreadable_snapshot() -> bytes:
    """A snapshot with one byte flipped: its checksum no longer matches."""
    data = _engine_with_orders().snapshot()
    return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]


def test_a_written_snapshot_restores_the_engine_and_an_uncompressed_one_still_does(
    redis_client: redis.Redis,
) -> None:
    engine = _engine_with_orders()
    SnapshotWriter(lambda: redis_client).write(Snapshot(engine.snapshot(), "7-0", paused=False))
    stored: dict[bytes, bytes] = redis_client.hgetall(SNAPSHOT_KEY)  # type: ignore[assignment]
    assert len(stored[b"data"]) < len(engine.snapshot()) / 2  # stored compressed
    restored = TradingEngine()
    assert restore_engine(restored, redis_client) == ("7-0", False, 0)
    assert restored.snapshot() == engine.snapshot()

    # as snapshots were written before they were compressed: no encoding field
    redis_client.delete(SNAPSHOT_KEY)
    redis_client.hset(SNAPSHOT_KEY, mapping={"data": engine.snapshot(), "log_id": "7-0", "paused": 1})
    restored = TradingEngine()
    assert restore_engine(restored, redis_client) == ("7-0", True, 0)
    assert restored.snapshot() == engine.snapshot()


@pytest.mark.parametrize(
    ("encoding", "data", "error"),
    [("zlib", b"not zlib", "not zlib data"), ("lz4", b"whatever", "unknown encoding")],
)
def test_a_snapshot_that_cannot_be_read_is_reported_corrupt(
    redis_client: redis.Redis, encoding: str, data: bytes, error: str
) -> None:
    """ValueError is what the shard keeps for inspection (hean:engine:snapshot:corrupt)."""
    redis_client.hset(SNAPSHOT_KEY, mapping={"data": data, "encoding": encoding, "log_id": "1-0"})
    with pytest.raises(ValueError, match=error):
        restore_engine(TradingEngine(), redis_client)


def test_downgrade_rewrites_the_snapshot_as_format_1_uncompressed(
    redis_client: redis.Redis,
    own_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`hean downgrade-snapshot`: what versions before snapshot format 2 read (format 1, no
    `encoding`), the same state, the same log id; this version reads it too."""
    monkeypatch.setenv("REDIS_URL", own_db_url)
    assert cli.main(["downgrade-snapshot"]) == 0
    assert "no engine snapshot stored" in capsys.readouterr().out
    engine = _engine_with_orders()
    SnapshotWriter(lambda: redis_client).write(Snapshot(engine.snapshot(), "7-0", paused=True))
    assert cli.main(["downgrade-snapshot"]) == 0
    assert "rewritten as format 1" in capsys.readouterr().out
    stored: dict[bytes, bytes] = redis_client.hgetall(SNAPSHOT_KEY)  # type: ignore[assignment]
    assert set(stored) == {b"data", b"log_id", b"paused"}
    data = stored[b"data"]
    assert int.from_bytes(data[8:16], "little") == 1
    assert int.from_bytes(data[-8:], "little") == _core.snapshot_checksum(data[:-8], 1)
    assert data[16:-8] == engine.snapshot()[16:-8]
    restored = TradingEngine()
    assert restore_engine(restored, redis_client) == ("7-0", True, 0)
    assert restored.snapshot() == engine.snapshot()
    assert downgrade_snapshot(redis_client) == ("7-0", len(data))  # again: the same bytes
    assert redis_client.hget(SNAPSHOT_KEY, "data") == data


def test_downgrade_leaves_a_snapshot_it_cannot_read_as_it_is(
    redis_client: redis.Redis,
    own_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_URL", own_db_url)
    broken = _unreadable_snapshot()
    redis_client.hset(SNAPSHOT_KEY, mapping={"data": broken, "log_id": "3-0"})
    assert cli.main(["downgrade-snapshot"]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert redis_client.hgetall(SNAPSHOT_KEY) == {b"data": broken, b"log_id": b"3-0"}


def test_an_unreadable_snapshot_is_set_aside_and_the_engine_rebuilt_halted(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the snapshot held is gone, so the engine worker does not trade as if nothing
    happened: it keeps the snapshot for inspection, rebuilds from the log after it, and starts
    halted with the reason; every restart rebuilds the same until an operator resets it."""
    import workers.shard as shard_module

    monkeypatch.setattr(shard_module, "sync_client", lambda: redis_client)
    broken = _unreadable_snapshot()
    redis_client.hset(SNAPSHOT_KEY, mapping={"data": broken, "log_id": "3-0"})
    logged = [
        ("start", {}),
        ("update_market", {"symbol": "ETHUSDT", "bid": "10", "ask": "11", "last": "10.5"}),
        ("submit_order", {"client_order_id": "after", "symbol": "ETHUSDT", "side": "BUY", "quantity": "2"}),
    ]
    for i, (cmd, params) in enumerate(logged):
        redis_client.xadd(LOG_KEY, {"cmd": cmd, "params": json.dumps(params), "now_ns": "1"}, id=f"4-{i}")

    engine = EngineShard().engine
    assert redis_client.hgetall(CORRUPT_SNAPSHOT_KEY) == {b"data": broken, b"log_id": b"3-0"}
    assert not redis_client.exists(SNAPSHOT_KEY)
    assert engine.state == EngineState.HALTED
    assert engine.status().halt_reason == SNAPSHOT_LOST_REASON
    # the log after the snapshot was replayed; what the snapshot held is not there
    assert [(p.symbol, float(p.quantity)) for p in engine.positions()] == [("ETHUSDT", 2.0)]
    assert EngineShard().engine.snapshot() == engine.snapshot()  # a restart: the same engine
    assert engine.start() is False  # halted: a plain start does not trade on it

    # the operator resets the kill switch; that control command writes a snapshot
    assert engine.reset_kill_switch()
    SnapshotWriter(lambda: redis_client).write(Snapshot(engine.snapshot(), "5-0", paused=False))
    assert EngineShard().engine.state == EngineState.STOPPED

    # that snapshot cannot be read either: both are kept, the newest where the first was
    second = _unreadable_snapshot()
    redis_client.delete(SNAPSHOT_KEY)
    redis_client.hset(SNAPSHOT_KEY, mapping={"data": second, "log_id": "5-0"})
    assert EngineShard().engine.state == EngineState.HALTED
    assert redis_client.hgetall(CORRUPT_SNAPSHOT_KEY) == {b"data": second, b"log_id": b"5-0"}
    [earlier] = redis_client.keys(CORRUPT_SNAPSHOT_KEY + ":*")
    assert redis_client.hgetall(earlier) == {b"data": broken, b"log_id": b"3-0"}


class _WrittenAfterTheRead:
    """`client`, on which `write` runs right after the first read of the stored snapshot, the
    way the writer's thread can write one while a restore is reading (a rebuild after a batch
    that did not commit, while a snapshot handed to the thread is on its way)."""

    def __init__(self, client: redis.Redis, write: object) -> None:
        self._client, self._write = client, write

    def _written(self) -> None:
        write, self._write = self._write, None
        if write is not None:
            write()  # type: ignore[operator]

    def hgetall(self, name: str) -> object:
        reply = self._client.hgetall(name)
        if name == SNAPSHOT_KEY:
            self._written()
        return reply

    def pipeline(self, transaction: bool = True) -> object:
        owner, pipe = self, self._client.pipeline(transaction=transaction)

        class Pipe:
            def __enter__(self) -> Pipe:
                return self

            def __exit__(self, *_: object) -> None:
                pipe.reset()

            def execute(self) -> list[object]:
                replies = pipe.execute()
                owner._written()
                return replies

            def __getattr__(self, name: str) -> object:
                return getattr(pipe, name)

        return Pipe()

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)


def test_a_snapshot_written_while_a_restore_reads_loses_it_no_entry(redis_client: redis.Redis) -> None:
    """The writer's thread writes a snapshot (and trims the log entries it holds) while the
    engine is rebuilt: the rebuilt engine still holds every logged command. Before, the
    snapshot and the log were read apart; a write between the two reads trimmed entries that
    the snapshot read before did not hold, and the engine came back without them (here the
    market, the start and the first orders: later orders on it were refused)."""
    full = TradingEngine()
    commands: list[tuple[str, dict[str, object]]] = [
        ("risk_adjust", {"max_orders_per_second": 0, "max_leverage": "1000"}),
        ("update_market", {"symbol": "BTC", "bid": "100", "ask": "100", "last": "100"}),
        ("start", {}),
    ]
    commands += [
        ("submit_order", {"client_order_id": f"race-{i}", "symbol": "BTC", "side": "BUY", "quantity": "0.1"})
        for i in range(297)
    ]
    held = b""
    for k, (command, params) in enumerate(commands):
        fields = {"cmd": command, "params": json.dumps(params), "now_ns": str(1_000_000 + k)}
        redis_client.xadd(LOG_KEY, fields, id=f"{k + 1}-0")
        replay_entry(full, {key.encode(): value.encode() for key, value in fields.items()})
        if k + 1 == 200:
            held = full.snapshot()
    writer = SnapshotWriter(lambda: redis_client)
    client = _WrittenAfterTheRead(redis_client, lambda: writer.write(Snapshot(held, "200-0", paused=False)))
    restored = TradingEngine()
    # read before the write: no snapshot yet, all 300 entries replayed
    assert restore_engine(restored, client) == ("300-0", False, 300)  # type: ignore[arg-type]
    assert redis_client.xlen(LOG_KEY) < 200  # the write trimmed whole stream nodes meanwhile
    assert restored.snapshot() == full.snapshot()
    assert restored.state is EngineState.RUNNING
    assert restored.submit_order(client_order_id="race-0", symbol="BTC", side="BUY", quantity="0.1").duplicate
