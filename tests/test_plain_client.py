"""Issue 15 item 3: the recipe a plain python-socketio client follows across a web process
crash (README, "Control"): its own request id per command, every command kept until its
result, all of them sent again with the same ids when it connects again. The server runs each
once and answers the newest connection: the first ack, and the result."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import socketio

from support import http_json, restart_web, start_engine_worker, stop_engine_worker, wait_for

TIMEOUT = 60  # hang guard on a busy machine


class PlainClient:
    """The README's recipe, as a trader would write it with python-socketio."""

    def __init__(self, url: str, token: str) -> None:
        self.pending: dict[str, dict[str, Any]] = {}  # request_id -> command, until its result
        self.acks: dict[str, list[dict[str, Any]]] = {}
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.sids: list[str] = []
        self.lock = threading.Lock()
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=1)
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.sio.on("command_ack", self.on_ack)
        self.sio.on("command_result", self.on_result)
        self.sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)

    def on_connect(self) -> None:
        self.sids.append(str(self.sio.sid))
        with self.lock:
            waiting = list(self.pending.values())
        for payload in waiting:  # not answered yet: again, with the same request id
            self.sio.emit("command", payload)

    def on_disconnect(self, *_: Any) -> None:
        # not part of the recipe: python-engineio leaves the websocket of a connection that
        # broke open (a ResourceWarning later, which this suite turns into an error)
        ws = getattr(self.sio.eio, "ws", None)
        if ws is not None:
            ws.close()

    def on_ack(self, ack: dict[str, Any]) -> None:
        with self.lock:
            self.acks.setdefault(ack["request_id"], []).append(ack)
            if not ack["accepted"] and ack["error"]["code"] != "unavailable":
                self.pending.pop(ack["request_id"], None)  # refused for good

    def on_result(self, result: dict[str, Any]) -> None:
        with self.lock:
            self.pending.pop(result["request_id"], None)
            self.results.setdefault(result["request_id"], []).append(result)

    def send(self, command: str, params: dict[str, Any]) -> str:
        payload = {"command": command, "params": params, "request_id": uuid.uuid4().hex}
        with self.lock:
            self.pending[payload["request_id"]] = payload
        if self.sio.connected:
            self.sio.emit("command", payload)
        return str(payload["request_id"])

    def close(self) -> None:
        self.sio.disconnect()


def engine_status(system: dict[str, Any]) -> dict[str, Any]:
    status, body, _ = http_json(f"{system['url']}/api/state/system/engine", token=system["token"])
    assert status == 200, body
    return dict(body["value"])


def test_a_plain_client_resends_across_a_web_crash_and_each_command_runs_once(
    system: dict[str, Any], logs_dir: Path
) -> None:
    sym = "P" + uuid.uuid4().hex[:8].upper()
    client = PlainClient(str(system["url"]), str(system["token"]))
    try:
        for command, params in (
            ("reset_kill_switch", {}),
            ("update_market", {"symbol": sym, "bid": "10", "ask": "10", "last": "10"}),
            ("start", {}),
        ):
            request_id = client.send(command, params)
            wait_for(lambda rid=request_id: rid in client.results, TIMEOUT, f"{command} to run")
        before = engine_status(system)["orders_submitted"]

        def order() -> str:
            params = {"client_order_id": uuid.uuid4().hex, "symbol": sym, "side": "BUY", "quantity": "1"}
            return client.send("submit_order", params)

        stop_engine_worker(system, crash=False)  # what is acked now waits on the queue
        try:
            queued = [order() for _ in range(5)]
            wait_for(lambda: all(rid in client.acks for rid in queued), TIMEOUT, "the first acks")
            assert all(client.acks[rid][0]["accepted"] for rid in queued)
            unread: list[str] = []
            # sent to a web process that froze, then died: never read, never acked
            restart_web(system, logs_dir, while_frozen=lambda: unread.extend(order() for _ in range(3)))
            wait_for(lambda: len(client.sids) == 2, TIMEOUT, "the client to reconnect")
            wait_for(lambda: all(rid in client.acks for rid in unread), TIMEOUT, "the resent commands' acks")
        finally:
            start_engine_worker(system, logs_dir)
        everything = queued + unread
        wait_for(lambda: all(rid in client.results for rid in everything), TIMEOUT, "every result")
    finally:
        client.close()

    # the queued ones were acked twice (the resend: the first ack again, `duplicate`), the unread
    # ones once; each result came once, to the new connection (the first one had gone)
    for rid in queued:
        first, again = client.acks[rid]
        assert again == dict(first, duplicate=True)
    for rid in unread:
        assert [a["duplicate"] for a in client.acks[rid]] == [False]
    assert all(len(client.results[rid]) == 1 and client.results[rid][0]["success"] for rid in everything)
    # each ran once: the engine took exactly these orders
    wait_for(
        lambda: engine_status(system)["orders_submitted"] - before == len(everything),
        TIMEOUT,
        "the engine's count of orders",
    )
    for rid in everything:
        status, record, _ = http_json(f"{system['url']}/api/commands/{rid}", token=system["token"])
        assert status == 200 and record["result"]["success"], record
