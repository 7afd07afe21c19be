"""The journal's reservation script on a real Redis: the broker message it builds is the one
`escape_envelope` + `MessageFrame.message` build (and kombu reads), and the history stream gets
the envelopes as they were sent. A repeated request id gets the ack that was sent."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from hean.celery_wire import batch_envelopes, batch_frame, escape_envelope
from hean.command_journal import CommandJournal, journal_key
from hean.db import commands, open_database
from hean.history import HistoryStore
from hean.messages import ack_message, envelope_json
from hean.redis_client import DurabilityRule, OwnConnection
from hean.topology import BATCH_TASKS, ENGINE_QUEUE, HISTORY_STREAM_KEY
from support import kill_own_connection
from workers.app import app


def envelope(request_id: str, params: dict[str, Any]) -> str:
    return envelope_json(request_id, "submit_order", json.dumps(params, ensure_ascii=False), "sid-1", 1.5)


ASCII = {"symbol": "BTC/USDT", "note": 'quote " backslash \\ newline \n tab \t nul \x00 del \x7f'}
UNICODE = {"note": "é ✓ \u2028 𝄞"}


@pytest.mark.parametrize("text", [*ASCII.values(), *UNICODE.values(), "\ud800 lone", "", '"'])
def test_an_escaped_envelope_is_the_same_string_inside_a_json_string(text: str) -> None:
    assert json.loads(f'"{escape_envelope(text)}"') == text
    assert json.loads(f'"{escape_envelope(json.dumps({"t": text}))}"') == json.dumps({"t": text})


@pytest.mark.parametrize("params", [{}, ASCII, UNICODE], ids=["empty", "ascii", "unicode"])
def test_the_queued_message_is_the_frame_around_the_escaped_envelopes(
    redis_client: redis.Redis, params: dict[str, Any]
) -> None:
    journal = CommandJournal(redis_client)
    queue = f"journal-{uuid.uuid4().hex[:8]}"
    ids = [f"j-{uuid.uuid4().hex}" for _ in range(3)]
    envelopes = [envelope(rid, {**params, "i": i}) for i, rid in enumerate(ids)]
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], queue, "batch-1", "submit_order")
    redis_client.delete(HISTORY_STREAM_KEY)

    reservations = journal.reserve_and_enqueue(
        [(rid, "submit_order", env) for rid, env in zip(ids, envelopes, strict=True)], queue, frame
    )

    assert [r.new for r in reservations] == [True, True, True]
    (raw,) = redis_client.lrange(queue, 0, -1)
    message = raw.decode()
    assert message == frame.message([escape_envelope(env) for env in envelopes], ids)
    assert batch_envelopes(raw) == [json.loads(env) for env in envelopes]
    ((_, fields),) = redis_client.xrange(HISTORY_STREAM_KEY)
    assert fields[b"c"].decode() == "\n".join(envelopes)


def test_a_reserved_request_id_is_not_enqueued_again(redis_client: redis.Redis) -> None:
    journal = CommandJournal(redis_client)
    queue = f"journal-{uuid.uuid4().hex[:8]}"
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], queue, "batch-1", "submit_order")
    first, second = (f"j-{uuid.uuid4().hex}" for _ in range(2))
    journal.reserve_and_enqueue([(first, "submit_order", envelope(first, ASCII))], queue, frame)

    again = journal.reserve_and_enqueue(
        [(first, "submit_order", envelope(first, ASCII)), (second, "submit_order", envelope(second, {}))],
        queue,
        frame,
    )

    assert [r.new for r in again] == [False, True]
    newest = redis_client.lindex(queue, 0)
    assert newest is not None
    assert [e["request_id"] for e in batch_envelopes(newest)] == [second]


def test_a_reservation_right_after_a_redis_restart_is_not_refused(redis_client: redis.Redis) -> None:
    """The web's journal owns its connection (OwnConnection); Redis closing it less than
    CHECK_IDLE_S after its last use (a restart between two commands) used to refuse the next
    commands `unavailable`. They are reserved and queued, once."""
    journal = CommandJournal(redis_client).with_own_connection()
    queue = f"journal-{uuid.uuid4().hex[:8]}"
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], queue, "batch-1", "submit_order")
    first, second = (f"j-{uuid.uuid4().hex}" for _ in range(2))
    journal.reserve_and_enqueue([(first, "submit_order", envelope(first, {}))], queue, frame)
    assert isinstance(journal._scripts, OwnConnection)
    kill_own_connection(journal._scripts, redis_client)

    again = journal.reserve_and_enqueue([(second, "submit_order", envelope(second, {}))], queue, frame)

    assert [r.new for r in again] == [True]
    assert redis_client.llen(queue) == 2 and journal.state(second) == "reserved"


def test_results_go_into_the_window_and_one_history_entry_with_the_batch(redis_client: redis.Redis) -> None:
    """record_results queues one command for a batch's results: each in its key's `r`, all of
    them in one history entry, in order, committed with the rest of the MULTI."""
    journal = CommandJournal(redis_client)
    queue = f"journal-{uuid.uuid4().hex[:8]}"
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], queue, "batch-1", "submit_order")
    ids = [f"j-{uuid.uuid4().hex}" for _ in range(3)]
    journal.reserve_and_enqueue([(rid, "submit_order", envelope(rid, {})) for rid in ids], queue, frame)
    results = [
        {"request_id": rid, "command": "submit_order", "success": True, "result": {"n": note}, "error": None}
        for rid, note in zip(ids, ["plain", "line\nbreak ✓", ""], strict=True)
    ]
    redis_client.delete(HISTORY_STREAM_KEY)
    pipe = redis_client.pipeline(transaction=True)
    pipe.set(f"{queue}:marker", 1)
    CommandJournal.record_results(pipe, results)
    pipe.execute()

    assert [journal.state(rid) for rid in ids] == ["done", "done", "done"]
    assert [journal.get(rid)["result"] for rid in ids] == results  # type: ignore[index]
    ((_, fields),) = redis_client.xrange(HISTORY_STREAM_KEY)
    assert [json.loads(line) for line in fields[b"r"].split(b"\n")] == results
    CommandJournal.record_results(redis_client.pipeline(), [])  # nothing to record: no command


def test_compaction_keeps_the_command_and_ack_and_drops_the_result(redis_client: redis.Redis) -> None:
    """What the history writer leaves in the window once a result is in the database: `d`, and
    the command and ack if known, expiring after the window; a key already gone stays gone."""
    journal = CommandJournal(redis_client)
    full, bare, gone = (f"j-{uuid.uuid4().hex}" for _ in range(3))
    window = {"c": "submit_orders", "a": "1.5", "s": "2.0", "r": "x" * 20_000}  # a big result
    redis_client.hset(journal_key(full), mapping=window)
    redis_client.hset(journal_key(bare), mapping={"s": "2.0", "r": "{}"})  # never reserved by the web

    assert journal.compact([full, bare, gone], 600) == 2

    assert redis_client.hgetall(journal_key(full)) == {b"d": b"1", b"c": b"submit_orders", b"a": b"1.5"}
    assert redis_client.hgetall(journal_key(bare)) == {b"d": b"1"}
    assert not redis_client.exists(journal_key(gone))
    assert all(590 < redis_client.ttl(journal_key(rid)) <= 600 for rid in (full, bare))
    assert journal.state(full) == "done" and journal.compact([full], 600) == 1  # again: the same record


def test_the_window_gives_back_a_journaled_ack(redis_client: redis.Redis) -> None:
    journal = CommandJournal(redis_client)
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], "journal-acks", "batch-1", "stop")
    request_id = f"j-{uuid.uuid4().hex}"
    journal.reserve_and_enqueue([(request_id, "stop", envelope(request_id, {}))], "journal-acks", frame)
    assert journal.window_ack(request_id) is None  # sent, not journaled yet
    journal.record_acks([ack_message(request_id, "stop", True, 1.25)])
    assert journal.window_ack(request_id) == ack_message(request_id, "stop", True, 1.25)
    assert journal.window_ack("j-never-seen") is None


def test_a_repeat_answered_by_the_database_before_its_ack_got_there_gets_the_original_ack(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    # The history writer may store a command's result before its ack (journaled up to 20 ms
    # after it was sent): the repeat still gets the ack that was sent, not a new one.
    from web.intake import CommandWriter, PendingCommand

    history = HistoryStore(open_database(f"sqlite:///{tmp_path}/history.db"))
    journal = CommandJournal(redis_client, history=history)
    writer = CommandWriter(app, journal, DurabilityRule(fsync="off"))
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], "journal-db", "batch-1", "stop")
    result = {"request_id": "", "command": "stop", "success": True, "result": {}, "execution_time_ms": 1.0}
    sent = []
    for where in ("window", "process"):
        request_id = f"j-{uuid.uuid4().hex}"
        journal.reserve_and_enqueue([(request_id, "stop", envelope(request_id, {}))], "journal-db", frame)
        sent.append(ack_message(request_id, "stop", True, 2.5))
        if where == "window":
            journal.record_acks(sent[-1:])
        else:  # sent by this process, not journaled yet
            writer._unjournaled.append(sent[-1])
        with history.db.begin() as connection:
            connection.execute(commands.insert().values(
                request_id=request_id, command="stop", result=json.dumps({**result, "request_id": request_id})
            ))  # fmt: skip

    repeats = [PendingCommand(ack["request_id"], "stop", ENGINE_QUEUE, "{}", 0.0) for ack in sent]
    assert writer._answered_before(repeats) == []  # all answered from the database
    for pending, ack in zip(repeats, sent, strict=True):
        assert pending.outcome is not None
        assert pending.outcome.ack == {**ack, "duplicate": True}
        assert pending.outcome.earlier_result is not None
        assert pending.outcome.earlier_result["request_id"] == ack["request_id"]


@pytest.mark.parametrize("request_id", ['r"1', "r 1", "r\\1", "", "r" * 129])
def test_a_request_id_that_would_break_the_message_is_refused_before_anything_is_written(
    redis_client: redis.Redis, request_id: str
) -> None:
    """The script writes the new request ids into the message unescaped (hean.celery_wire.IDS_FIELD):
    one outside the edge's pattern is refused, and neither it nor its batch companions are reserved."""
    journal = CommandJournal(redis_client)
    queue = f"journal-{uuid.uuid4().hex[:8]}"
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], queue, "batch-1", "submit_order")
    good = f"j-{uuid.uuid4().hex}"
    items = [(rid, "submit_order", envelope(rid, {})) for rid in (good, request_id)]
    with pytest.raises(ValueError, match="request_id"):
        journal.reserve_and_enqueue(items, queue, frame)
    assert redis_client.llen(queue) == 0 and not redis_client.exists(journal_key(good))


def test_the_intake_warms_up_before_its_first_command(redis_client: redis.Redis, tmp_path: Path) -> None:
    """web.server runs `warm_up` as it starts serving: the database reader open, the server's
    durability known, the intake's scripts loaded (the first command found none of them and
    waited 36-47 ms for its ack, the next ones 3), Redis's memory read and the reserve for a kill
    switch made (this server has a maxmemory), and nothing enqueued or reserved."""
    from hean.command_journal import _RECORD_ACKS, _RESERVE
    from hean.core.system.probes import memory_reserve_size
    from hean.redis_client import script_sha
    from hean.topology import MEMORY_RESERVE_KEY
    from web.intake import WARM_UP_REQUEST_ID, CommandIntake

    history = HistoryStore(open_database(f"sqlite:///{tmp_path}/history.db"))
    intake = CommandIntake(app, CommandJournal(redis_client, history=history), DurabilityRule("auto"))
    redis_client.script_flush()

    assert intake.warm_up() == []

    assert history._reader is not None
    assert intake._writer._durability._known is not None
    assert not intake._writer._memory.due  # read: the first batch does not ask again
    assert redis_client.script_exists(script_sha(_RESERVE), script_sha(_RECORD_ACKS)) == [True, True]
    # nothing reserved, queued or journaled: only the memory reserve
    assert redis_client.keys() == [MEMORY_RESERVE_KEY.encode()]
    limit = int(redis_client.config_get("maxmemory")["maxmemory"])
    assert redis_client.strlen(MEMORY_RESERVE_KEY) == memory_reserve_size(limit) > 0
    assert intake._writer.journal.state(WARM_UP_REQUEST_ID) is None


def test_a_warm_up_without_redis_says_what_failed_and_leaves_it_to_the_first_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hean.redis_server import free_port
    from web.intake import CommandIntake

    gone = redis.Redis(port=free_port(), socket_connect_timeout=1)
    history = HistoryStore(open_database(f"sqlite:///{tmp_path}/history.db"))
    intake = CommandIntake(app, CommandJournal(gone, history=history), DurabilityRule("auto"))

    assert intake.warm_up() == ["durability", "memory", "scripts"]  # the database and frames need no Redis

    assert history._reader is not None
    assert "event=warm_up_failed step=durability" in caplog.text
    assert "event=warm_up_failed step=scripts" in caplog.text


def test_a_redis_that_refuses_the_memory_reserve_is_told_once_and_asked_again_later(
    redis_client: redis.Redis, own_db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An account without SETRANGE (an external server's ACL): the intake says once that it has
    no reserve for a kill switch, does not ask at every memory read, and makes the reserve once
    the account may (MemoryCheck.reserve_retry_s later), without a restart."""
    from hean.core.system.probes import memory_reserve_size
    from hean.topology import MEMORY_RESERVE_KEY
    from web.intake import CommandIntake

    def refused_setranges() -> int:
        stats = redis_client.info("commandstats").get("cmdstat_setrange", {})
        return int(stats.get("rejected_calls", 0))

    user = f"no-setrange-{uuid.uuid4().hex[:8]}"
    redis_client.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-setrange"]
    )
    parts = urlsplit(own_db_url)
    limited = redis.Redis(host=parts.hostname, port=parts.port, db=1, username=user, password="pw")
    try:
        history = HistoryStore(open_database(f"sqlite:///{tmp_path}/history.db"))
        intake = CommandIntake(app, CommandJournal(limited, history=history), DurabilityRule("auto"))
        memory = intake._writer._memory
        memory.reserve_retry_s = 30.0
        caplog.set_level(logging.INFO, logger="web.intake")
        refused_before = refused_setranges()

        assert intake.warm_up() == []  # said by its own line, not as a failed step
        for _ in range(3):  # the memory reads of the next seconds: not asked again
            intake._writer._read_memory()
        lines = [r.getMessage() for r in caplog.records if "memory_reserve" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith("event=memory_reserve_refused"), lines
        assert "no permissions to run the 'setrange' command" in lines[0] and "retry_in_s=30" in lines[0]
        assert refused_setranges() - refused_before == 1
        assert not redis_client.exists(MEMORY_RESERVE_KEY)

        memory._reserve_retry_at = 0.0  # due: asked again, refused for the same reason, not said again
        intake._writer._read_memory()
        assert refused_setranges() - refused_before == 2
        assert len([r for r in caplog.records if "memory_reserve" in r.getMessage()]) == 1

        redis_client.acl_setuser(user, commands=["+setrange"])
        intake._writer._read_memory()  # not due yet
        assert not redis_client.exists(MEMORY_RESERVE_KEY)
        memory._reserve_retry_at = 0.0
        intake._writer._read_memory()
        limit = int(redis_client.config_get("maxmemory")["maxmemory"])
        assert redis_client.strlen(MEMORY_RESERVE_KEY) == memory_reserve_size(limit) > 0
        assert memory.reserve_refused is None
        assert "event=memory_reserve_made" in caplog.records[-1].getMessage()
    finally:
        limited.close()
        redis_client.acl_deluser(user)
