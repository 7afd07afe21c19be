"""A killed worker of the llm and default queues (several consumers may share them, so its
successor cannot simply take back everything unacknowledged, as the engine worker does) does
not strand what it held for the visibility timeout (an hour): each delivered message names its
holder, whose lease lapses LEASE_S after it died, and any consumer then puts it back. And a
batch that an exception ends before its results are recorded answers each of its commands."""

from __future__ import annotations

import base64
import json
import signal
import sys
import time
import uuid
from typing import Any

import redis
from kombu import Connection, Queue

from hean.celery_wire import HOLDERS_KEY, LEASE_S, UNACKED_KEY, lease_key
from hean.command_journal import CommandJournal
from hean.processes import PROCESSES
from support import Client, ManagedProcess, wait_for
from workers.transport import Transport

#: LEASE_S, plus a restore check every unacked_restore_interval, plus the nap run again; far
#: below the visibility timeout (3,600 s) the message waited for before.
RESULT_AFTER_KILL_S = 90


def test_a_command_held_by_a_killed_default_worker_runs_again_within_seconds(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any
) -> None:
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client = Client(url, token)
    try:
        nap_id = uuid.uuid4().hex
        ack = client.command({"command": "nap", "params": {"seconds": 3}, "request_id": nap_id})
        assert ack["accepted"], ack
        wait_for(lambda: CommandJournal(store).state(nap_id) == "started", 30, "the nap to start")
        worker = next(p for p in system["processes"] if p.name.startswith("worker-llm"))
        holders = {v.decode() for v in store.hvals(HOLDERS_KEY)}
        assert any(f":{worker.pid}:" in holder for holder in holders), holders
        worker.process.send_signal(signal.SIGKILL)
        worker.stop()
        system["processes"].remove(worker)
        killed = time.monotonic()
        assert any(nap_id.encode() in raw for raw in store.hvals(UNACKED_KEY))  # held, not done
        spec = next(s for s in PROCESSES if s.name == "worker-llm")
        system["processes"].append(
            ManagedProcess(
                f"worker-llm-{uuid.uuid4().hex[:6]}", spec.argv(sys.executable), system["env"], logs_dir
            )
        )
        wait_for(
            lambda: CommandJournal(store).state(nap_id) == "done",
            RESULT_AFTER_KILL_S,
            "the nap to run again on the restarted worker",
        )
        took = time.monotonic() - killed
        result = client.result_for(nap_id)
        assert result["success"] and result["result"] == {"slept": 3}, result
        print(f"the killed worker's command answered {took:.1f} s after the kill")
        assert took >= LEASE_S - 1  # not before the holder's lease lapsed
        # acknowledged (late: after the commit the journal shows), its holder forgotten
        wait_for(
            lambda: not any(nap_id.encode() in raw for raw in store.hvals(UNACKED_KEY)),
            30,
            "the message to be acknowledged",
        )
        assert not any(f":{worker.pid}:" in v.decode() for v in store.hvals(HOLDERS_KEY))
    finally:
        client.close()
        store.close()


def test_a_default_batch_that_raises_answers_each_of_its_commands(
    system: dict[str, Any], system_redis_url: str
) -> None:
    """An exception out of a whole batch of the default queue (`default_raise`, run with the
    commands beside it) answers every command of the batch that has no result, `no result ...
    it may have run`; before, they stayed without a result for good. The worker goes on."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client = Client(url, token)
    try:
        echo_id, bug_id = uuid.uuid4().hex, uuid.uuid4().hex
        for request_id, command, params in ((echo_id, "echo", {"text": "x"}), (bug_id, "default_raise", {})):
            ack = client.command({"command": command, "params": params, "request_id": request_id})
            assert ack["accepted"], ack
        bug = client.result_for(bug_id)
        assert not bug["success"] and bug["error"]["code"] == "command_failed", bug
        message = bug["error"]["message"]
        assert message.startswith("no result: the default worker failed") and "RuntimeError" in message, bug
        echo = client.result_for(echo_id)  # its own batch's result, or the same answer
        assert echo["success"] or echo["error"]["message"] == message, echo
        assert CommandJournal(store).state(echo_id) == CommandJournal(store).state(bug_id) == "done"
        again = client.command({"command": "echo", "params": {"text": "y"}})
        assert client.result_for(again["request_id"])["result"] == {"echo": "y"}
        worker = next(p for p in system["processes"] if p.name.startswith("worker-llm"))
        assert "event=failed_batch_answered queue=default" in worker.log_text()
    finally:
        client.close()
        store.close()


def test_only_messages_whose_holder_is_gone_are_restored(own_db_url: str) -> None:
    """Two deliveries held, one by a holder with a lease and one by a holder without: the
    restore puts back only the second, once, marked redelivered; the first stays held. Nothing
    is restored while Redis is younger than a lease (a live holder may not have renewed yet)."""
    name = "holders-test"
    client = redis.Redis.from_url(own_db_url)
    try:
        with Connection(own_db_url, transport=Transport) as connection:
            queue = Queue(name, routing_key=name)
            with connection.Producer() as producer:
                for i in range(2):
                    producer.publish({"i": i}, routing_key=name, declare=[queue])
            held: list[Any] = []
            with connection.Consumer(queue, callbacks=[lambda body, message: held.append(message)]):
                while len(held) < 2:
                    connection.drain_events(timeout=5)
            channel = connection.default_channel
            tags = [message.delivery_tag for message in held]
            assert all(client.hget(HOLDERS_KEY, tag) is not None for tag in tags)  # recorded
            client.hset(HOLDERS_KEY, tags[0], "another-host:1:alive")
            client.set(lease_key("another-host:1:alive"), "1", ex=60)
            client.hset(HOLDERS_KEY, tags[1], "another-host:2:killed")  # no lease: gone
            client.hset(HOLDERS_KEY, "acked-long-ago", "another-host:3:gone")  # nothing to restore

            channel.qos.restore_after_uptime_s = 10**9  # a Redis that (re)started a lease ago
            assert channel.qos.restore_orphans() == 0
            channel.qos.restore_after_uptime_s = 0
            assert channel.qos.restore_orphans() == 1
            assert channel.qos.restore_orphans() == 0  # once
            assert client.hexists(UNACKED_KEY, tags[0]) and not client.hexists(UNACKED_KEY, tags[1])
            assert client.hkeys(HOLDERS_KEY) == [tags[0].encode()]
            assert client.llen(name) == 1
            back = json.loads(client.lindex(name, 0))
            assert back["headers"]["redelivered"] is True
            body = back["body"]
            if back["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            assert json.loads(body) == held[1].payload
            held[0].ack()
            assert client.hlen(HOLDERS_KEY) == 0  # the ack forgets its holder
    finally:
        client.close()
