"""The control plane against real processes: protocol, error codes, idempotency, rooms, custom
commands, REST twins, state subscriptions, and a flood that must not starve anyone."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from hean.core.system.redis_state import get_sync_state_manager
from hean.redis_server import free_port
from support import Client, ManagedProcess, http_json, http_ok, python_module, wait_for

# -- protocol --------------------------------------------------------------------------------


def test_result_goes_to_the_sender_and_the_operators_room_only(system: dict[str, Any]) -> None:
    url, token = str(system["url"]), str(system["token"])
    sender = Client(url, token)
    operator = Client(url, token, operator=True)  # joins at connect
    dashboard = Client(url, token)
    bystander = Client(url, token)
    try:
        assert dashboard.sio.call("join_operators", timeout=5) == {"room": "operators", "joined": True}
        request_id = uuid.uuid4().hex
        ack = sender.command(
            {"command": "echo", "params": {"text": "hi", "times": 2}, "request_id": request_id}
        )
        assert ack["accepted"] is True and ack["duplicate"] is False
        for receiver in (sender, operator, dashboard):
            result = receiver.result_for(request_id)
            assert result == {
                "request_id": request_id,
                "command": "echo",
                "success": True,
                "result": {"echo": "hihi"},
                "error": None,
                "execution_time_ms": result["execution_time_ms"],
            }
        with pytest.raises(queue.Empty):
            bystander.results.get(timeout=1.0)
    finally:
        for c in (sender, operator, dashboard, bystander):
            c.close()


def test_a_bulk_message_from_the_workers_is_fanned_out_in_order(
    system: dict[str, Any], system_redis_url: str
) -> None:
    """Workers publish a batch's results as one message; the web delivers each emit (python-
    socketio's, or a packet the worker encoded) in order and skips entries that are neither (a
    bad entry never costs the good ones)."""
    from hean.messages import BULK_METHOD, PACKET_METHOD
    from workers.emit import packet_message

    url, token = str(system["url"]), str(system["token"])
    operator = Client(url, token, operator=True)
    try:

        def emit(i: int) -> dict[str, Any]:
            result = {"request_id": f"bulk-{i}", "success": True, "result": {"i": i}}
            if i % 2:  # as the engine worker sends them: encoded, to the sender and the operators
                return packet_message("command_result", result, ["no-such-sid", "operators"])
            return {
                "method": "emit",
                "event": "command_result",
                "data": result,
                "namespace": "/",
                "room": "operators",
                "skip_sid": None,
                "callback": None,
                "host_id": "test",
            }

        messages: list[Any] = [emit(i) for i in range(300)]
        messages[5:5] = [
            7,
            "not an emit",
            None,
            {"method": "nonsense"},
            {"method": PACKET_METHOD, "packet": 5},
            {"method": PACKET_METHOD, "packet": '2["command_result",{}]', "room": 7},
            {"method": PACKET_METHOD, "packet": '0{"sid":"x"}', "room": "operators"},
        ]
        channel = str(system["env"].get("HEAN_SOCKETIO_CHANNEL", "hean-socketio"))
        client = redis.Redis.from_url(system_redis_url)
        client.publish(channel, json.dumps({"method": BULK_METHOD, "messages": messages}))
        client.publish(channel, "{not json")
        client.publish(channel, json.dumps({"method": BULK_METHOD, "messages": "nope"}))
        client.publish(channel, json.dumps(emit(300)))  # a plain message still works after those
        seen = [operator.results.get(timeout=10)["request_id"] for _ in range(301)]
        # every one, once (python-socketio hands each packet to a thread of its own: the order
        # they are put here in is not the order they came in)
        assert sorted(seen) == sorted(f"bulk-{i}" for i in range(301))
        client.close()
    finally:
        operator.close()


def test_a_request_id_is_generated_when_omitted(client: Client) -> None:
    ack = client.command({"command": "echo", "params": {"text": "x"}})
    assert ack["accepted"] is True and len(ack["request_id"]) == 32
    assert client.result_for(ack["request_id"])["result"] == {"echo": "x"}


def test_a_repeated_request_id_returns_the_original_and_never_runs_twice(client: Client) -> None:
    def stop(request_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        ack = client.command({"command": "stop", "params": {}, "request_id": request_id})
        return ack, client.result_for(request_id)

    first_ack, first = stop("dup-" + uuid.uuid4().hex)
    again_ack, again = stop(first_ack["request_id"])
    assert again_ack["duplicate"] is True and first_ack["duplicate"] is False
    assert {k: v for k, v in again_ack.items() if k != "duplicate"} == {
        k: v for k, v in first_ack.items() if k != "duplicate"
    }
    assert again == first  # the stored result, not a second run
    _, after = stop("dup-" + uuid.uuid4().hex)
    assert after["result"]["command_count"] == first["result"]["command_count"] + 1


def test_a_repeat_sent_right_after_the_ack_gets_the_original_ack(client: Client) -> None:
    # The first ack is journaled by the next batch's script (here: the repeat's own batch),
    # before its reservation is looked at: the repeat gets the first ack, not a new one.
    for _ in range(20):
        request_id = "quick-" + uuid.uuid4().hex
        first = client.command({"command": "echo", "params": {"text": "q"}, "request_id": request_id})
        again = client.command({"command": "echo", "params": {"text": "q"}, "request_id": request_id})
        assert (first["duplicate"], again["duplicate"]) == (False, True)
        assert {k: v for k, v in again.items() if k != "duplicate"} == {
            k: v for k, v in first.items() if k != "duplicate"
        }


def test_an_ack_no_batch_follows_is_journaled_alone(system: dict[str, Any]) -> None:
    url, token = system["url"], system["token"]
    body = {"command": "echo", "params": {"text": "alone"}}
    status, ack, _ = http_json(url + "/api/commands", "POST", body, token=token)
    assert status == 202

    def journaled() -> dict[str, Any] | None:
        _, record, _ = http_json(f"{url}/api/commands/{ack['request_id']}", token=token)
        return record if record.get("ack") else None

    record = wait_for(journaled, 10, "the ack in the journal")
    assert isinstance(record, dict) and record["ack"] == ack


def test_a_client_gone_before_its_acks_loses_nothing_and_disturbs_no_one(system: dict[str, Any]) -> None:
    url, token = str(system["url"]), str(system["token"])
    leaver = Client(url, token)
    ids = [f"gone-{uuid.uuid4().hex}" for _ in range(50)]
    for request_id in ids:
        payload = {"command": "echo", "params": {"text": request_id}, "request_id": request_id}
        leaver.sio.emit("command", payload)
    leaver.acks.get(timeout=10)  # the server is reading them: leave now, before most acks arrive
    leaver.sio.disconnect()
    other = Client(url, token)
    try:
        request_id = uuid.uuid4().hex
        assert other.command({"command": "echo", "params": {"text": "still"}, "request_id": request_id})[
            "accepted"
        ]
        assert other.result_for(request_id)["result"] == {"echo": "still"}

        def ran(rid: str) -> bool:
            code, record, _ = http_json(f"{url}/api/commands/{rid}", token=token)
            return code == 404 or record["status"] == "done"  # 404: never read before the close

        wait_for(lambda: all(ran(rid) for rid in ids), 30, "every command that was read to run")
        done = [rid for rid in ids if http_json(f"{url}/api/commands/{rid}", token=token)[0] == 200]
        assert done, "the server read none of the commands sent before the disconnect"
        for rid in done:
            record = http_json(f"{url}/api/commands/{rid}", token=token)[1]
            assert record["ack"]["accepted"] is True and record["result"]["result"] == {"echo": rid}
    finally:
        other.close()


def test_list_commands_shows_builtin_and_custom_commands(client: Client) -> None:
    ack = client.command({"command": "list_commands", "params": {}})
    result = client.result_for(ack["request_id"])
    commands = {c["name"]: c for c in result["result"]["commands"]}
    assert {"start", "stop", "list_commands", "echo", "always_fail"} <= set(commands)
    assert commands["echo"]["queue"] == "default"
    assert commands["echo"]["description"] == "Repeat a text (test command)."
    assert commands["echo"]["params"]["properties"]["times"]["maximum"] == 10
    assert commands["always_fail"]["description"] == "Fail with the given error code (test command)."


# -- error codes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ({"command": "no_such_thing"}, "unknown_command", "command"),
        ({"command": "echo", "params": {"text": "a", "times": 11}}, "invalid_params", "params.times"),
        ({"command": "echo", "params": {}}, "invalid_params", "params.text"),
        ({"command": "echo", "params": {"text": 5}}, "invalid_params", "params.text"),
        ({"command": "echo", "params": {"text": "a" * 70_000}}, "payload_too_large", "params"),
        ({"command": "echo", "params": {"text": "a"}, "request_id": ""}, "invalid_payload", "request_id"),
        ({"command": "Echo"}, "invalid_payload", "command"),
        ({"command": "echo", "params": [1]}, "invalid_payload", "params"),
    ],
)
def test_rejections_carry_a_stable_code_and_name_the_field(
    client: Client, payload: dict[str, Any], code: str, field: str
) -> None:
    ack = client.command(payload)
    assert ack["accepted"] is False
    assert ack["error"]["code"] == code
    assert ack["error"]["field"] == field
    assert field.split(".")[-1] in ack["error"]["message"]


def test_a_handler_error_comes_back_with_its_code(client: Client) -> None:
    ack = client.command({"command": "always_fail", "params": {"code": "engine_halted"}})
    assert ack["accepted"] is True
    result = client.result_for(ack["request_id"])
    assert result["success"] is False
    assert result["error"]["code"] == "engine_halted"
    assert "engine_halted" in result["error"]["message"]


def test_unknown_events_get_an_error(client: Client) -> None:
    reply = client.sio.call("launch", {"x": 1}, timeout=5)
    assert reply["error"]["code"] == "unknown_event"
    assert "command" in reply["error"]["message"]


# -- REST twins ------------------------------------------------------------------------------


def test_rest_commands_share_the_schemas_and_codes(system: dict[str, Any]) -> None:
    commands, token = system["url"] + "/api/commands", system["token"]
    status, body, _ = http_json(commands, "POST", {"command": "echo", "params": {"text": "r"}}, token=token)
    assert status == 202 and body["accepted"] is True
    request_id = body["request_id"]

    def done() -> dict[str, Any] | None:
        code, record, _ = http_json(f"{commands}/{request_id}", token=token)
        return record if code == 200 and record["status"] == "done" else None

    record = wait_for(done, 30, "the REST command to finish")
    assert isinstance(record, dict)
    assert record["result"]["result"] == {"echo": "r"} and record["ack"]["accepted"] is True

    status, again, _ = http_json(
        commands, "POST", {"command": "echo", "params": {"text": "r"}, "request_id": request_id}, token=token
    )
    assert status == 200 and again["duplicate"] is True and again["result"]["result"] == {"echo": "r"}

    cases = [
        ({"command": "nope"}, 404, "unknown_command"),
        ({"command": "echo", "params": {"text": "a", "times": 0}}, 422, "invalid_params"),
        ({"command": "echo", "extra": 1}, 400, "invalid_payload"),
        ([1, 2], 400, "invalid_payload"),
    ]
    for payload, expected_status, code in cases:
        status, body, _ = http_json(commands, "POST", payload, token=token)
        assert status == expected_status and body["error"]["code"] == code, payload
    status, body, _ = http_json(commands, "POST", raw=b"{not json", token=token)
    assert status == 400 and body["error"]["code"] == "invalid_payload"
    status, body, _ = http_json(commands + "/never-seen", token=token)
    assert status == 404 and body["error"]["code"] == "not_found"

    # what no view answers comes back as the API's JSON error too
    deep = b'{"command":"echo","params":{"text":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    huge = b'{"command":"echo","x":"' + b"a" * 2_100_000 + b'"}'  # over the 2 MB a body may be
    for method, path, raw, expected_status, code in (
        ("POST", "/api/commands", deep, 400, "invalid_payload"),  # a RecursionError in the reader
        ("POST", "/api/commands", huge, 413, "payload_too_large"),
        ("GET", "/api/no-such-thing", None, 404, "not_found"),
        ("DELETE", "/api/orders", None, 405, "method_not_allowed"),
    ):
        status, body, _ = http_json(system["url"] + path, method, raw=raw, token=token)
        assert (status, body["error"]["code"]) == (expected_status, code), (method, path, status, body)


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_rest_control_needs_the_bearer_token(system: dict[str, Any], token: str | None) -> None:
    for method, path, body in (
        ("POST", "/api/commands", {"command": "start"}),
        ("GET", "/api/commands/x", None),
        ("GET", "/api/state/global/x", None),
    ):
        status, reply, headers = http_json(system["url"] + path, method, body, token=token)
        assert status == 401 and reply["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer")


def test_health_is_open_without_a_token(system: dict[str, Any]) -> None:
    status, body, _ = http_json(system["url"] + "/api/system/health")
    assert status == 200 and "status" in body


def test_rest_state_reads_the_state_bus(system: dict[str, Any], system_redis_url: str) -> None:
    manager = get_sync_state_manager(system_redis_url)
    state, token = system["url"] + "/api/state", system["token"]
    key = "k" + uuid.uuid4().hex[:8]
    status, body, _ = http_json(f"{state}/tests/{key}", token=token)
    assert status == 404 and body["error"]["code"] == "not_found"
    manager.set_state(key, {"orders": 3}, namespace="tests")
    status, body, _ = http_json(f"{state}/tests/{key}", token=token)
    assert status == 200
    assert body["value"] == {"orders": 3} and body["version"] == 1 and body["namespace"] == "tests"
    status, body, _ = http_json(state + "/bad%20ns/x", token=token)
    assert status == 400 and body["error"]["code"] == "invalid_params"


def test_every_answer_carries_the_security_headers(system: dict[str, Any]) -> None:
    import urllib.error
    import urllib.request

    from web.rest import SECURITY_HEADERS

    for path in ("/", "/static/js/console.js", "/api/system/health", "/api/no-such-thing", "/metrics"):
        try:
            with urllib.request.urlopen(system["url"] + path, timeout=10) as response:
                headers = response.headers
        except urllib.error.HTTPError as exc:  # the 404: an error answer carries them too
            headers = exc.headers
        for name, value in SECURITY_HEADERS.items():
            assert headers.get(name) == value, (path, name, headers.get(name))
    assert "frame-ancestors 'none'" in SECURITY_HEADERS["Content-Security-Policy"]


def test_cors_is_closed_by_default(system: dict[str, Any]) -> None:
    status, _, headers = http_json(
        system["url"] + "/api/system/health",
        token=system["token"],
        headers={"Origin": "https://evil.example"},
    )
    assert status == 200  # an answer, without the header
    assert "Access-Control-Allow-Origin" not in headers


# -- state subscriptions ---------------------------------------------------------------------


def test_subscribe_state_streams_every_version_until_unsubscribed(
    system_redis_url: str, client: Client
) -> None:
    manager = get_sync_state_manager(system_redis_url)
    key = "sub" + uuid.uuid4().hex[:8]
    manager.set_state(key, {"n": 0}, namespace="tests")
    reply = client.sio.call("subscribe_state", {"key": key, "namespace": "tests"}, timeout=5)
    assert reply["subscribed"] is True
    first = client.states.get(timeout=5)
    assert first["namespace"] == "tests" and first["key"] == key
    assert first["value"] == {"n": 0} and first["version"] == 1 and first["timestamp"] > 0
    for n in range(1, 4):
        manager.set_state(key, {"n": n}, namespace="tests")
    seen = [client.states.get(timeout=5) for _ in range(3)]
    assert [s["version"] for s in seen] == [2, 3, 4]
    assert [s["value"]["n"] for s in seen] == [1, 2, 3]
    reply = client.sio.call("unsubscribe_state", {"key": key, "namespace": "tests"}, timeout=5)
    assert reply == {"subscribed": False, "namespace": "tests", "key": key, "was_subscribed": True}
    manager.set_state(key, {"n": 99}, namespace="tests")
    with pytest.raises(queue.Empty):
        client.states.get(timeout=1.0)


def test_a_connection_holds_at_most_max_subscriptions(client: Client, system: dict[str, Any]) -> None:
    from web.socket_handlers import MAX_SUBSCRIPTIONS

    namespace = "cap" + uuid.uuid4().hex[:8]
    for i in range(MAX_SUBSCRIPTIONS):  # keys nobody set: each answers with its empty state
        client.sio.emit("subscribe_state", {"key": f"k{i}", "namespace": namespace})
    newest = {"key": f"k{MAX_SUBSCRIPTIONS - 1}", "namespace": namespace}
    last = client.sio.call("subscribe_state", newest, timeout=30)  # after every one before it
    assert last == {"subscribed": True, **newest, "already": True}
    refused = client.sio.call("subscribe_state", {"key": "one-more", "namespace": namespace}, timeout=5)
    assert refused["subscribed"] is False and refused["error"]["code"] == "too_many_subscriptions", refused
    # one freed, one more taken; another connection has its own count
    freed = client.sio.call("unsubscribe_state", {"key": "k0", "namespace": namespace}, timeout=5)
    assert freed["was_subscribed"] is True
    again = client.sio.call("subscribe_state", {"key": "one-more", "namespace": namespace}, timeout=5)
    assert again["subscribed"] is True, again
    with Client(str(system["url"]), str(system["token"])) as other:
        reply = other.sio.call("subscribe_state", {"key": "one-more", "namespace": namespace}, timeout=5)
        assert reply["subscribed"] is True, reply


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("trading_state", None),
        ({"namespace": "x"}, "key"),
        ({"key": "a b"}, "key"),
        ({"key": "k", "namespace": 3}, "namespace"),
    ],
)
def test_subscribe_state_rejects_bad_targets(client: Client, payload: Any, field: str | None) -> None:
    reply = client.sio.call("subscribe_state", payload, timeout=5)
    assert reply["subscribed"] is False
    assert reply["error"]["field"] == field
    assert reply["error"]["code"] in {"invalid_payload", "invalid_params"}


# -- flood -----------------------------------------------------------------------------------


def _malformed(i: int) -> tuple[str, Any]:
    """Ten kinds of bad event, cycled; every 500th carries a 1 MB payload."""
    if i % 500 == 0:
        return "command", {"command": "x" * 1_000_000}
    kinds: list[tuple[str, Any]] = [
        ("command", None),
        ("command", 42),
        ("command", "start"),
        ("command", [1, 2]),
        ("command", {"params": {}}),
        ("command", {"command": 7}),
        ("command", {"command": "start", "params": {"x": 1}}),
        ("command", {"command": "nope"}),
        ("command", {"command": "echo", "params": {"text": None}}),
        ("not_an_event", {"a": 1}),
    ]
    return kinds[i % len(kinds)]


def test_a_flood_of_malformed_events_is_answered_and_does_not_starve_others(system: dict[str, Any]) -> None:
    """The flooder reads its answers in one loop (hean.testing.RawSocketIO): python-socketio's
    client starts a thread per incoming packet, and on a busy machine fell so far behind that
    its pongs came late and the server closed it, which measured the client, not the server."""
    from hean.testing.raw_socketio import RawSocketIO

    url, token = str(system["url"]), str(system["token"])
    flooder, worker_client = RawSocketIO(url, {"token": token}), Client(url, token)
    total = 10_000
    answers: dict[int, Any] = {}
    answered = threading.Event()
    failure: list[BaseException] = []

    def read() -> None:
        try:
            while len(answers) < total:
                kind, key, payload = flooder.recv()
                if kind == "ack" and isinstance(key, int):
                    answers[key] = payload
        except BaseException as exc:  # reported by the assertion below
            failure.append(exc)
        answered.set()

    def flood() -> None:
        for i in range(total):
            event, payload = _malformed(i)
            flooder.send(event, payload)

    good: list[tuple[dict[str, Any], dict[str, Any]]] = []
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        thread = threading.Thread(target=flood)
        thread.start()
        while thread.is_alive() or not good:
            request_id = uuid.uuid4().hex
            ack = worker_client.command(
                {"command": "echo", "params": {"text": "alive"}, "request_id": request_id}
            )
            good.append((ack, worker_client.result_for(request_id)))
        thread.join()
        assert answered.wait(180), f"only {len(answers)} of {total} malformed events were answered"
        assert not failure, f"the flooding connection failed after {len(answers)} answers: {failure[0]!r}"
        assert sorted(answers) == list(range(1, total + 1))  # each event answered once
        replies = list(answers.values())
        codes = {(a.get("error") or {}).get("code") if isinstance(a, dict) else repr(a) for a in replies}
        assert all(isinstance(a, dict) and a.get("accepted") is not True for a in replies)
        assert codes <= {
            "invalid_payload",
            "invalid_params",
            "unknown_command",
            "unknown_event",
            "rate_limited",
        }, codes
        assert {"invalid_payload", "invalid_params", "unknown_command", "unknown_event"} <= codes
        assert good and all(a["accepted"] and r["success"] for a, r in good)
        # the flooding connection itself is still usable once it slows down
        time.sleep(1.0)
        request_id = uuid.uuid4().hex
        echo = {"command": "echo", "params": {"text": "ok"}, "request_id": request_id}
        reply = flooder.call("command", echo)
        assert isinstance(reply, dict) and reply["accepted"]
    finally:
        flooder.close()
        worker_client.close()


@pytest.fixture(scope="module")
def strict_web(system: dict[str, Any], logs_dir: Any) -> Iterator[str]:
    """A second web process with a low per-connection rate (50/s, bursts of 20)."""
    port = free_port()
    env = dict(system["env"], HEAN_PORT=str(port), HEAN_COMMAND_RATE="50", HEAN_COMMAND_BURST="20")
    web = ManagedProcess("web-strict", python_module("web"), env, logs_dir)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(url + "/api/system/health"), 60, "the strict web process")
        yield url
    finally:
        web.stop()


def test_a_flooding_connection_is_rate_limited_and_others_are_not(
    system: dict[str, Any], strict_web: str
) -> None:
    token = str(system["token"])
    flooder, neighbour = Client(strict_web, token), Client(strict_web, token)
    replies: list[dict[str, Any]] = []
    done = threading.Event()
    total = 200

    def on_answer(reply: dict[str, Any]) -> None:
        replies.append(reply)
        if len(replies) == total:
            done.set()

    try:
        for _ in range(total):
            flooder.sio.emit("command", {"command": "nope"}, callback=on_answer)
        assert done.wait(60)
        codes = [r["error"]["code"] for r in replies]
        assert codes.count("rate_limited") >= total - 20 - 50  # burst + at most a second of refill
        assert codes.count("unknown_command") >= 20
        limited = next(r for r in replies if r["error"]["code"] == "rate_limited")
        assert "50" in limited["error"]["message"]
        # the neighbour on the same server has its own budget
        request_id = uuid.uuid4().hex
        ack = neighbour.command({"command": "echo", "params": {"text": "n"}, "request_id": request_id})
        assert ack["accepted"] is True
        assert neighbour.result_for(request_id)["result"] == {"echo": "n"}
        # and the flooder's budget refills
        time.sleep(1.0)
        assert flooder.command({"command": "list_commands"})["accepted"] is True
    finally:
        flooder.close()
        neighbour.close()


def test_an_exception_no_view_caught_is_a_json_500_under_api_without_its_details() -> None:
    from flask import Flask

    from web.commands_api import install_json_errors

    app = Flask(__name__)
    install_json_errors(app)

    @app.get("/api/boom")
    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret detail")

    client = app.test_client()
    api = client.get("/api/boom")
    assert api.status_code == 500 and api.json is not None
    assert api.json["error"]["code"] == "internal_error" and "secret detail" not in api.get_data(as_text=True)
    page = client.get("/boom")  # elsewhere Flask's own page
    assert page.status_code == 500 and page.json is None
