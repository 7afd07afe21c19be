"""The durable history, on SQLite and on a real PostgreSQL server: every command, ack, order,
fill and result reaches the database through the history writer; Redis keeps only a compact
window (HEAN_DEDUP_WINDOW_S, 2 s here); a request id repeated after the window is answered
from the database and never runs twice, whether it comes through the web or straight to the
engine worker; GET /api/orders and /api/fills read the database; /metrics shows the lag."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy
from celery import Celery
from sqlalchemy import select

from hean.command_journal import journal_key
from hean.db import commands, fills, open_database, orders, wait_for_index_builds
from hean.history import FILL_COLUMNS, ORDER_COLUMNS, HistoryFilter, HistoryStore
from hean.processes import PROCESSES
from hean.redis_server import PrivateRedis, free_port
from postgres_server import PostgresServer
from support import (
    SHARED_RISK_LIMITS,
    Client,
    ManagedProcess,
    http_json,
    http_ok,
    own_system_env,
    recorded,
    system_journal,
    wait_for,
)

WINDOW_S = 2
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def history(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, logs_dir: Path
) -> Iterator[dict[str, Any]]:
    """A system of its own (Redis, web, engine and default workers, history writer) on the
    database named by the parameter, with a 2-second dedup window."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"history-{kind}")
    extra = {}
    if kind == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        extra["DATABASE_URL"] = postgres.create_database("hean_" + uuid.uuid4().hex[:8])
    (root / "metrics").mkdir()
    server = PrivateRedis(root / "redis", port=free_port())
    server.start()
    port = free_port()
    token = "history-" + os.urandom(6).hex()
    env = own_system_env(
        root / "home",
        server.url,
        port,
        token,
        HEAN_DEDUP_WINDOW_S=str(WINDOW_S),
        PROMETHEUS_MULTIPROC_DIR=str(root / "metrics"),
        HEAN_SOCKETIO_CHANNEL=f"hean-history-{kind}",  # pub/sub is server-wide: a channel of its own
        HEAN_COMMAND_MODULES="custom_commands",
        PYTHONPATH=os.pathsep.join(filter(None, [str(PLUGINS_DIR), os.environ.get("PYTHONPATH")])),
        **extra,
    )
    specs = {spec.name: spec for spec in PROCESSES}
    started = [
        ManagedProcess(f"history-{kind}-{name}", specs[name].argv(sys.executable), env, logs_dir)
        for name in ("worker-engine", "worker-llm", "history", "web")
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(url + "/api/system/health"), 60, "the web process")
        system = {"url": url, "token": token, "env": env, "processes": started, "kind": kind}
        with Client(url, token) as client:
            ok(client, "risk_adjust", **SHARED_RISK_LIMITS)
            ok(client, "start")
        yield system
    finally:
        for process in reversed(started):
            process.stop()
        server.stop()


def run(
    client: Client, command: str, request_id: str | None = None, **params: Any
) -> tuple[dict[str, Any], Any]:
    """(ack, result message) of one command."""
    request_id = request_id or uuid.uuid4().hex
    ack = client.command({"command": command, "params": params, "request_id": request_id})
    assert ack["accepted"] is True, ack
    return ack, client.result_for(request_id)


def ok(client: Client, command: str, **params: Any) -> Any:
    _, result = run(client, command, **params)
    assert result["success"] is True, result
    return result["result"]


def symbol() -> str:
    return "H" + uuid.uuid4().hex[:8].upper() + "USDT"


def rest(system: dict[str, Any], path: str, token: str | None = "") -> tuple[int, Any]:
    status, body, _ = http_json(system["url"] + path, token=system["token"] if token == "" else token)
    return status, body


def rows(system: dict[str, Any], path: str, key: str, count: int) -> list[dict[str, Any]]:
    """`count` rows of a history listing, once the writer has them."""

    def listed() -> list[dict[str, Any]] | None:
        status, body = rest(system, path)
        assert status == 200, body
        return body[key] if len(body[key]) >= count else None

    found: list[dict[str, Any]] = wait_for(listed, 30, f"{count} rows at {path}")  # type: ignore[assignment]
    return found


def window(system: dict[str, Any]) -> redis.Redis:
    return redis.Redis.from_url(system["env"]["REDIS_URL"])


def test_every_command_ack_order_fill_and_result_reaches_the_database(history: dict[str, Any]) -> None:
    sym = symbol()
    with Client(history["url"], history["token"]) as client:
        ok(client, "update_market", symbol=sym, bid="99", ask="101", last="100")
        market_id = uuid.uuid4().hex
        ack, single = run(
            client, "submit_order", market_id, client_order_id="m-" + market_id, symbol=sym, side="BUY",
            quantity="2",
        )  # fmt: skip
        orders = [
            {
                "client_order_id": f"b{i}-{uuid.uuid4().hex[:8]}",
                "symbol": sym,
                "side": "SELL",
                "quantity": "1",
            }
            for i in range(3)
        ]
        batch_ack, batch = run(client, "submit_orders", orders=orders)
        rest_id = "l-" + uuid.uuid4().hex
        resting = ok(client, "submit_order", client_order_id=rest_id, symbol=sym, side="BUY", quantity="1",
                     order_type="LIMIT", price="95")  # fmt: skip
        assert resting["order"]["status"] == "RESTING"
        cancel_id = "c-" + uuid.uuid4().hex
        ok(client, "submit_order", client_order_id=cancel_id, symbol=sym, side="BUY", quantity="1",
           order_type="LIMIT", price="90")  # fmt: skip
        ok(client, "cancel_order", client_order_id=cancel_id)
        moved = ok(client, "update_market", symbol=sym, bid="94", ask="95", last="95")
        assert [f["client_order_id"] for f in moved["fills"]] == [rest_id]
        refused_id = uuid.uuid4().hex
        _, refused = run(client, "submit_order", refused_id, client_order_id="big-" + refused_id, symbol=sym,
                         side="BUY", quantity="900")  # fmt: skip
        assert refused["error"]["code"] == "order_rejected"

    journal = system_journal(history)
    try:
        record = recorded(journal, market_id)
    finally:
        journal.history.db.dispose()
    assert record["ack"] == {**ack, "duplicate": False} and record["result"] == single  # type: ignore[index]
    assert record["envelope"]["params"]["quantity"] == "2"  # type: ignore[index]

    listed = rows(history, f"/api/orders?symbol={sym}", "orders", 7)
    by_client = {o["client_order_id"]: o for o in listed}
    market = by_client["m-" + market_id]
    assert (market["status"], market["side"], market["request_id"]) == ("FILLED", "BUY", market_id)
    assert Decimal(market["fill_price"]) == Decimal(101) and Decimal(market["quantity"]) == 2
    assert [by_client[o["client_order_id"]]["request_id"] for o in orders] == [batch_ack["request_id"]] * 3
    assert {by_client[o["client_order_id"]]["status"] for o in orders} == {"FILLED"}
    assert by_client["big-" + refused_id]["status"] == "REJECTED"
    assert by_client["big-" + refused_id]["reject_reason"] == "MAX_NOTIONAL"
    # the resting order filled by the market update, the other cancelled: updated in place
    wait_for(lambda: rest(history, f"/api/orders?client_order_id={rest_id}")[1]["orders"][0]["status"]
             == "FILLED", 30, "the resting order FILLED")  # fmt: skip
    wait_for(lambda: rest(history, f"/api/orders?client_order_id={cancel_id}")[1]["orders"][0]["status"]
             == "CANCELLED", 30, "the cancelled order CANCELLED")  # fmt: skip

    fills = rows(history, f"/api/fills?symbol={sym}", "fills", 5)
    assert sorted(f["client_order_id"] for f in fills) == sorted(
        ["m-" + market_id, rest_id, *(o["client_order_id"] for o in orders)]
    )
    assert next(f for f in fills if f["client_order_id"] == rest_id)["price"] == moved["fills"][0]["price"]
    assert batch["result"]["filled"] == 3


def test_a_request_id_repeated_after_the_window_is_answered_from_the_database_and_never_runs_twice(
    history: dict[str, Any],
) -> None:
    sym = symbol()
    store = window(history)
    with Client(history["url"], history["token"]) as client:
        ok(client, "update_market", symbol=sym, bid="10", ask="10", last="10")
        request_id = uuid.uuid4().hex
        params = {"client_order_id": request_id, "symbol": sym, "side": "BUY", "quantity": "1"}
        ack, first = run(client, "submit_order", request_id, **params)
        assert first["result"]["order"]["status"] == "FILLED"
        # in the window: compacted once the result is in the database, then gone after WINDOW_S
        wait_for(lambda: store.hget(journal_key(request_id), "d") == b"1", 30, "the result in the database")
        assert set(store.hkeys(journal_key(request_id))) == {b"c", b"a", b"d"}
        assert 0 < store.ttl(journal_key(request_id)) <= WINDOW_S
        wait_for(lambda: not store.exists(journal_key(request_id)), 10 + WINDOW_S, "the window to pass")
        before = ok(client, "start")["orders_submitted"]

        again = client.command({"command": "submit_order", "params": params, "request_id": request_id})
        assert again["duplicate"] is True
        assert {k: v for k, v in again.items() if k != "duplicate"} == {
            k: v for k, v in ack.items() if k != "duplicate"
        }
        assert client.result_for(request_id) == first  # the stored result, not a second run

        # the same command straight onto the engine queue (a message redelivered after the
        # window): the worker asks the database, resends the result and runs nothing
        envelope = {"request_id": request_id, "command": "submit_order", "params": params,
                    "received_at_ms": time.time() * 1000}  # fmt: skip
        producer = Celery(broker=history["env"]["REDIS_URL"])
        producer.send_task(
            "workers.engine.run_batch", args=[[envelope]], queue="engine", routing_key="engine"
        )
        after = ok(client, "start")  # the engine queue is in order: this ran after it
        assert after["orders_submitted"] == before
        assert not store.exists(journal_key(request_id))  # the resend did not bring it back
    listed = rows(history, f"/api/orders?request_id={request_id}", "orders", 1)
    assert len(listed) == 1 and listed[0]["status"] == "FILLED"


#: Run in a fresh interpreter: what the engine worker's modules import, then a lookup.
LAZY_HISTORY = """
import sys
from workers.app import app
app.loader.import_default_modules()  # every task module, as each worker imports them
from hean.command_journal import UNKNOWN, resolve_started
from workers.execution import _history
before = "sqlalchemy" in sys.modules
resolve_started(["in-the-window"], [None], _history)  # in the window: no lookup
between = "sqlalchemy" in sys.modules
found = resolve_started(["left-the-window"], [UNKNOWN], _history)  # asks the database
print(before, between, "sqlalchemy" in sys.modules, found == {"left-the-window": None})
"""


def test_the_engine_worker_imports_sqlalchemy_only_when_a_lookup_needs_the_database(tmp_path: Path) -> None:
    """The engine worker asks the database only for request ids that left the window (above), so
    its modules do not import SQLAlchemy (about 0.14 s of each start, measured with
    `-X importtime`); the first lookup opens the database, here an empty SQLite file."""
    env = {**os.environ, "HEAN_HOME": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}"}
    done = subprocess.run(
        [sys.executable, "-c", LAZY_HISTORY],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False", "True", "True"], done.stdout


def test_redis_keeps_a_compact_window_and_the_history_lag_is_a_metric(history: dict[str, Any]) -> None:
    store = window(history)
    with Client(history["url"], history["token"]) as client:
        ids = [run(client, "echo", text="x")[0]["request_id"] for _ in range(20)]
    for request_id in ids:
        wait_for(lambda r=request_id: store.hget(journal_key(r), "d") == b"1", 30, "the compact record")
    sizes = [store.memory_usage(journal_key(r)) for r in ids]
    assert all(size is not None and size <= 200 for size in sizes), sizes
    wait_for(lambda: store.xlen("hean:history") == 0, 30, "the history stream drained")

    with urllib.request.urlopen(history["url"] + "/metrics", timeout=10) as response:
        scrape = response.read().decode()
    assert "hean_history_lag_seconds 0.0" in scrape
    assert 'hean_history_rows_total{table="commands"}' in scrape
    # a stopped writer shows as a growing lag
    writer = next(p for p in history["processes"] if p.name.endswith("-history"))
    writer.stop()
    try:
        with Client(history["url"], history["token"]) as client:
            run(client, "echo", text="while the writer is down")

        def lag() -> float:
            with urllib.request.urlopen(history["url"] + "/metrics", timeout=10) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith("hean_history_lag_seconds "):
                        return float(line.split()[1])
            return 0.0

        wait_for(lambda: lag() >= 1.0, 30, "a lag of a second")
    finally:
        history["processes"].remove(writer)
        spec = next(s for s in PROCESSES if s.name == "history")
        history["processes"].append(
            ManagedProcess(
                writer.name + "-2", spec.argv(sys.executable), history["env"], writer.log_path.parent
            )
        )
    wait_for(lambda: store.xlen("hean:history") == 0, 30, "the restarted writer to catch up")


def test_orders_and_fills_listings_filter_page_and_refuse_bad_filters(history: dict[str, Any]) -> None:
    sym = symbol()
    with Client(history["url"], history["token"]) as client:
        ok(client, "update_market", symbol=sym, bid="10", ask="10", last="10")
        started = time.time()
        for i in range(5):
            ok(client, "submit_order", client_order_id=f"p{i}-{uuid.uuid4().hex[:6]}", symbol=sym,
               side="BUY" if i % 2 else "SELL", quantity="1")  # fmt: skip
    everything = rows(history, f"/api/orders?symbol={sym}", "orders", 5)
    assert [o["id"] for o in everything] == sorted(
        (o["id"] for o in everything), reverse=True
    )  # newest first

    pages: list[dict[str, Any]] = []
    path = f"/api/orders?symbol={sym}&limit=2"
    while True:
        status, body = rest(history, path)
        assert status == 200 and len(body["orders"]) <= 2
        pages += body["orders"]
        if body["next_cursor"] is None:
            break
        path = f"/api/orders?symbol={sym}&limit=2&cursor={body['next_cursor']}"
    assert [o["id"] for o in pages] == [o["id"] for o in everything]

    status, body = rest(history, f"/api/orders?symbol={sym}&side=buy&status=FILLED")
    assert status == 200 and len(body["orders"]) == 2 and {o["side"] for o in body["orders"]} == {"BUY"}
    status, body = rest(history, f"/api/fills?symbol={sym}&from={started}&to={time.time() + 1}")
    assert status == 200 and len(body["fills"]) == 5
    status, body = rest(history, f"/api/fills?symbol={sym}&to=2001-01-01T00:00:00Z")
    assert status == 200 and body["fills"] == []

    for path, field in (
        ("/api/orders?side=LONG", "side"),
        ("/api/orders?status=DONE", "status"),
        ("/api/orders?limit=0", "limit"),
        ("/api/orders?limit=x", "limit"),
        ("/api/orders?cursor=-1", "cursor"),
        ("/api/orders?from=yesterday", "from"),
        ("/api/orders?from=nan", "from"),
        ("/api/fills?to=inf", "to"),
        ("/api/orders?from=20&to=10", "from"),
        ("/api/orders?symbl=BTC", "symbl"),
        ("/api/fills?status=FILLED", "status"),
        ("/api/orders?symbol=%20x", "symbol"),
    ):
        status, body = rest(history, path)
        assert status == 400 and body["error"]["code"] == "invalid_params", (path, body)
        assert body["error"]["field"] == field, (path, body)
    assert rest(history, "/api/orders", token=None)[0] == 401
    assert rest(history, "/api/fills", token="wrong")[0] == 401


def test_reconcile_finds_nothing_missing_then_a_lost_and_a_doubled_command(history: dict[str, Any]) -> None:
    from hean.history import HistoryStore
    from hean.reconcile import reconcile

    store = window(history)
    journal = system_journal(history)
    started = time.time()
    try:
        with Client(history["url"], history["token"]) as client:
            ids = [run(client, "echo", text=str(i))[0]["request_id"] for i in range(10)]
        report = reconcile(store, journal.history, since=started, settle_s=30)
        assert report.ok and report.in_flight == 0, report
        assert report.acked == report.applied == report.answered == 10, report
        assert report.engine["state"] == "RUNNING"

        # an acked command that never reached a queue (as if lost), and a command that ran twice:
        # written to the history stream as the web and a worker would have
        lost = "lost-" + uuid.uuid4().hex
        envelope = {"request_id": lost, "command": "echo", "params": {"text": "l"}, "reply_to": None,
                    "received_at_ms": time.time() * 1000}  # fmt: skip
        store.xadd("hean:history", {"c": json.dumps(envelope)})
        store.xadd("hean:history", {"a": f"{lost} 1.5"})
        # accepted (reserved and queued) but its ack never journaled: the web process died
        # before it could; it must run all the same, so it counts as accepted, and missing here
        unjournaled = "unjournaled-" + uuid.uuid4().hex
        envelope = dict(envelope, request_id=unjournaled, received_at_ms=time.time() * 1000 + 1)
        store.xadd("hean:history", {"c": json.dumps(envelope)})
        again = journal.get(ids[0])["result"]
        store.xadd("hean:history", {"r": json.dumps(again)})
        report = reconcile(store, journal.history, since=started, settle_s=10)
        assert (report.missing, report.duplicated) == ([lost, unjournaled], [ids[0]]), report
        assert not report.ok and report.acked == 12 and report.ack_journaled == 11 and report.applied == 10

        env = dict(history["env"])
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "hean"), "reconcile", "--from", str(started), "--json"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 1, cli.stderr
        assert json.loads(cli.stdout)["missing"] == [lost, unjournaled]
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "hean"), "reconcile", "--to", str(started)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0 and cli.stdout.strip().endswith("ok"), cli.stdout + cli.stderr

        status, body = rest(history, f"/api/reconcile?from={started}")
        assert status == 200 and body["ok"] is False and body["missing"] == [lost, unjournaled], body
        assert rest(history, "/api/reconcile?since=1")[0] == 400
        assert rest(history, "/api/reconcile", token=None)[0] == 401
        assert isinstance(journal.history, HistoryStore)
    finally:
        journal.history.db.dispose()


@pytest.mark.parametrize("history", ["postgresql"], indirect=True)
def test_a_hung_database_refuses_commands_in_time_and_the_web_serves_on(
    history: dict[str, Any], postgres_server: PostgresServer
) -> None:
    """PostgreSQL that hangs (stopped, connections open, not refusing): psycopg's wait in C
    froze the whole web process, health checks and every connection included, for as long as
    the database hung. Now only the command waits, for at most the lookup's deadline
    (web.intake.HISTORY_LOOKUP_TIMEOUT_S), and is refused `unavailable`, not enqueued: once the
    database answers, the same request id runs, once."""
    request_id = uuid.uuid4().hex
    command = {"command": "start", "params": {}, "request_id": request_id}
    with Client(history["url"], history["token"]) as client:
        ok(client, "start")
        with postgres_server.frozen():
            ack = client.command(command)
            assert ack["accepted"] is False and ack["error"]["code"] == "unavailable", ack
            assert ack["error"]["message"] == "command history unreachable; retry"
            assert http_ok(history["url"] + "/api/system/health")  # the process serves on meanwhile
        ack = wait_for(lambda: (a := client.command(command))["accepted"] and a, 30, "the command accepted")
        assert ack["duplicate"] is False  # refused before: never reserved, so it runs now
        result = client.result_for(request_id)
        assert result["success"] is True, result
        assert client.command(command)["duplicate"] is True  # and once only


def _database_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest, name: str) -> str:
    """A new database of `kind` ("sqlite" or "postgresql", on the session's server) for one test."""
    if kind == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        return postgres.create_database(f"hean_{name}_{uuid.uuid4().hex[:8]}")
    return f"sqlite:///{tmp_path}/{name}.db"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_web_puts_a_deadline_on_lookups_only_where_it_can_interrupt_them(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """SQLite waits in C (its busy timeout bounds a lookup); psycopg waits green under eventlet,
    so the web's deadline (test_a_hung_database_refuses_commands_in_time_and_the_web_serves_on)
    is armed for PostgreSQL only."""
    db = open_database(_database_url(kind, tmp_path, request, "wait"))
    try:
        assert HistoryStore(db).waits_in_c is (kind == "sqlite")
        assert HistoryStore(lambda: db).answered(["nobody"]) == {}
    finally:
        db.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_bulk_insert_writes_what_sqlalchemys_insert_writes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The history writer's rows go in through the driver's executemany (statements compiled by
    SQLAlchemy once, no per-row parameter processing): the orders and fills read back are those
    SQLAlchemy's own execute of the same statement writes, a row already there is left as it is
    (ON CONFLICT DO NOTHING), and the commands' upsert merges, on SQLite and on PostgreSQL."""
    db = open_database(_database_url(kind, tmp_path, request, "bulk"))
    store = HistoryStore(db)
    at = time.time()
    order_rows = [
        {
            "request_id": rid,
            "seq": seq,
            "client_order_id": f"c-{seq}",
            "order_id": 2**40 + seq,
            "symbol": "BTCUSDT",
            "side": "BUY" if seq % 2 else "SELL",
            "order_type": "LIMIT",
            "time_in_force": "GTC",
            "quantity": "0.001",
            "price": None if seq == 2 else "50000.5",
            "status": "FILLED" if seq else "REJECTED",
            "reject_reason": None if seq else "MIN_NOTIONAL",
            "filled_quantity": "0.001" if seq else "0",
            "fill_price": "50000.5" if seq else None,
            "fee": "0.05",
            "duplicate": seq == 3,
            "received_at": at - 0.25,
            "executed_at": at,
        }
        for rid in ("bulk-a", "orm-a")
        for seq in range(4)
    ]
    fill_rows = [
        {
            "request_id": rid,
            "seq": seq,
            "order_id": 7 + seq,
            "client_order_id": f"c-{seq}",
            "symbol": "ETHUSDT",
            "side": "SELL",
            "quantity": "1",
            "price": "3000",
            "fee": None,
            "executed_at": at,
        }
        for rid in ("bulk-a", "orm-a")
        for seq in range(2)
    ]

    def split(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
        return [row for row in rows if row["request_id"].startswith(prefix)]

    with db.begin() as connection:
        for table, rows in ((orders, order_rows), (fills, fill_rows)):
            columns = ORDER_COLUMNS if table is orders else FILL_COLUMNS
            as_tuples = [tuple(row[name] for name in columns) for row in split(rows, "bulk-")]
            store._insert_many_ignoring(connection, table, as_tuples)
            connection.execute(store._insert_ignoring(table, ["request_id", "seq"]), split(rows, "orm-"))
    with db.begin() as connection:  # again, changed: nothing is overwritten
        changed = [dict(row, status="CANCELLED") for row in split(order_rows, "bulk-")]
        store._insert_many_ignoring(
            connection, orders, [tuple(row[n] for n in ORDER_COLUMNS) for row in changed]
        )
    # the commands' upsert: a later entry fills in what an earlier one left empty, never
    # overwrites what is known, and adds up the runs
    with db.begin() as connection:
        store._upsert_commands(connection, {"u1": {"request_id": "u1", "command": "stop", "runs": 1}})
        store._upsert_commands(
            connection,
            {
                "u1": {"request_id": "u1", "ack_ms": 1.5, "success": False, "runs": 1},
                "u2": {"request_id": "u2", "received_at": at},
            },
        )
    written: dict[str, list[dict[str, Any]]] = {}
    with db.connect() as connection:
        query = (
            select(commands).where(commands.c.request_id.in_(["u1", "u2"])).order_by(commands.c.request_id)
        )
        u1, u2 = (dict(row._mapping) for row in connection.execute(query))
        assert (u1["command"], u1["ack_ms"], u1["success"], u1["runs"], u1["result"]) == (
            "stop",
            1.5,
            False,
            2,
            None,
        )
        assert (u2["received_at"], u2["command"], u2["runs"]) == (at, None, None)
        for table in (orders, fills):
            query = select(table).order_by(table.c.request_id, table.c.seq)
            read = [{k: v for k, v in row._mapping.items() if k != "id"} for row in connection.execute(query)]
            bulk = [dict(row, request_id="a") for row in read if row["request_id"] == "bulk-a"]
            orm = [dict(row, request_id="a") for row in read if row["request_id"] == "orm-a"]
            assert bulk == orm and len(bulk) == (4 if table is orders else 2)
            written[table.name] = bulk
    db.dispose()
    assert [row["status"] for row in written["orders"]] == ["REJECTED", "FILLED", "FILLED", "FILLED"]
    assert [row["duplicate"] for row in written["orders"]] == [False, False, False, True]
    assert [row["order_id"] for row in written["orders"]] == [2**40 + seq for seq in range(4)]
    assert written["orders"][2]["price"] is None and written["fills"][0]["fee"] is None


_STATUS_OF = ("FILLED", "REJECTED", "FILLED", "RESTING", "CANCELLED")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_listing_pages_through_every_row_once_newest_first_in_its_indexs_order(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A page follows the index its filters use (so that it reads about `limit` rows of it, not
    every row of a symbol): with a symbol or a time range, newest first by execution time then
    id; otherwise by id. Orders of one command share their time, and the host's clock may step
    back: across pages of 3, every matching row comes once, in that order, on SQLite and
    PostgreSQL; fills too (they have no status to filter by)."""
    db = open_database(_database_url(kind, tmp_path, request, "pages"))
    store = HistoryStore(db)
    base = 1_800_000_000.0
    times = [base + t for t in (1, 2, 2, 2, 3, 5, 4, 4, 6, 6, 6, 6, 7, 0.5, 8, 8)]  # 5 -> 4: a step back
    with db.begin() as connection:
        for table in (orders, fills):
            connection.execute(
                table.insert(),
                [
                    {
                        "request_id": f"pages-{i // 4}",
                        "seq": i % 4,
                        "client_order_id": f"p-{i}",
                        "order_id": i,
                        "symbol": "BTC/USDT" if i % 3 else "ETH/USDT",
                        "side": "BUY" if i % 2 else "SELL",
                        "quantity": "1",
                        "price": "10",
                        **({"status": _STATUS_OF[i % 5], "duplicate": False} if table is orders else {}),
                        "executed_at": at,
                    }
                    for i, at in enumerate(times)
                ],
            )
    for listing in (store.orders, store.fills):
        rows = listing(HistoryFilter(limit=1000))[0]
        ids = {row["client_order_id"]: row["id"] for row in rows}
        for filters, by_time in (
            (HistoryFilter(limit=3), False),
            (HistoryFilter(side="BUY", limit=3), False),
            (HistoryFilter(symbol="BTC/USDT", limit=3), True),
            (HistoryFilter(since=base + 2, limit=3), True),
            (HistoryFilter(symbol="BTC/USDT", since=base + 1, until=base + 8, limit=3), True),
            (HistoryFilter(status="FILLED", limit=3), False),
            (HistoryFilter(status="REJECTED", limit=3), False),  # through ix_orders_status
            (HistoryFilter(status="RESTING", side="SELL", limit=3), False),
            (HistoryFilter(status="EXPIRED", limit=3), False),  # none
            (HistoryFilter(status="REJECTED", symbol="BTC/USDT", limit=3), True),
            (HistoryFilter(status="CANCELLED", since=base + 2, limit=3), True),
        ):
            seen: list[int] = []
            cursor = None
            for _ in range(len(times)):
                page, cursor = listing(dataclasses.replace(filters, cursor=cursor))
                assert len(page) <= 3
                seen += [row["id"] for row in page]
                if cursor is None:
                    break
            matching = [
                (at, ids[f"p-{i}"])
                for i, at in enumerate(times)
                if (filters.symbol is None or filters.symbol == ("BTC/USDT" if i % 3 else "ETH/USDT"))
                and (filters.side is None or filters.side == ("BUY" if i % 2 else "SELL"))
                and (filters.since is None or at >= filters.since)
                and (filters.until is None or at < filters.until)
                and (listing == store.fills or filters.status in (None, _STATUS_OF[i % 5]))
            ]
            # by time: newest first, the later id first among equal times; else by id
            expected = sorted(matching, reverse=True) if by_time else sorted(matching, key=lambda m: -m[1])
            assert seen == [rid for _, rid in expected], (listing.__name__, filters)
    db.dispose()


#: The partial indexes of the orders not FILLED, which a status page reads.
STATUS_INDEXES = ("ix_orders_status", "ix_orders_status_time", "ix_orders_symbol_status")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_an_older_version_made_gains_the_status_indexes_and_a_status_page_reads_them(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`create_all` never adds an index to a table that exists: `open_database` creates
    ix_orders_status, ix_orders_status_time and ix_orders_symbol_status on a database made
    without them, with the rows already there in them. On SQLite a page filtered by a status
    other than FILLED searches one of them instead of reading the table (for a status no order
    has: every row of it), with a symbol every order of the symbol, or with times alone every
    order of the range; with a request or client order id, that id's own index."""
    url = _database_url(kind, tmp_path, request, "status")
    db = open_database(url)
    with db.begin() as connection:
        for index in STATUS_INDEXES:  # as an older version made it
            connection.execute(sqlalchemy.text(f"DROP INDEX {index}"))
        connection.execute(
            orders.insert(),
            [
                {
                    "request_id": f"old-{i}",
                    "seq": 0,
                    "client_order_id": f"o-{i}",
                    "symbol": "BTC/USDT",
                    "side": "BUY",
                    "status": _STATUS_OF[i % 5],
                    "duplicate": False,
                    "executed_at": 1e9 + i,
                }
                for i in range(20)
            ],
        )
    db.dispose()
    db = open_database(url)
    assert wait_for_index_builds(60)  # PostgreSQL builds them in a thread of its own
    try:
        assert set(STATUS_INDEXES) <= {
            index["name"] for index in sqlalchemy.inspect(db).get_indexes("orders")
        }
        for index in STATUS_INDEXES:
            # PostgreSQL: the index's condition; SQLite: the rows there before the index, in it
            sql, expected = {
                "postgresql": (
                    "SELECT pg_get_expr(indpred, indrelid) FROM pg_index "
                    f"WHERE indexrelid = '{index}'::regclass",
                    "((status)::text <> 'FILLED'::text)",
                ),
                "sqlite": (
                    f"SELECT count(*) FROM orders INDEXED BY {index} "
                    "WHERE symbol = 'BTC/USDT' AND status = 'REJECTED' AND status <> 'FILLED'",
                    4,
                ),
            }[kind]
            with db.connect() as connection:
                assert connection.execute(sqlalchemy.text(sql)).scalar() == expected
        statements: list[tuple[str, Any]] = []
        sqlalchemy.event.listen(
            db, "before_cursor_execute", lambda _c, _k, sql, params, *_: statements.append((sql, params))
        )
        store = HistoryStore(db)
        for filters, index in (
            (HistoryFilter(status="REJECTED", limit=2), "ix_orders_status"),
            (HistoryFilter(status="EXPIRED"), "ix_orders_status"),
            (HistoryFilter(status="CANCELLED", side="BUY"), "ix_orders_status"),
            (HistoryFilter(status="REJECTED", symbol="BTC/USDT"), "ix_orders_symbol_status"),
            (HistoryFilter(status="EXPIRED", symbol="BTC/USDT", since=1e9 + 3), "ix_orders_symbol_status"),
            (HistoryFilter(status="RESTING", since=1e9), "ix_orders_status_time"),
            (
                HistoryFilter(status="CANCELLED", side="BUY", since=1e9 + 2, until=1e9 + 15),
                "ix_orders_status_time",
            ),
            # with an id, its own index, not the status's
            (HistoryFilter(status="REJECTED", request_id="old-6", since=1e9), "sqlite_autoindex_orders_1"),
            (HistoryFilter(status="REJECTED", client_order_id="o-11"), "ix_orders_client_order_id"),
            (HistoryFilter(status="FILLED", symbol="BTC/USDT"), "ix_orders_symbol_time"),
        ):
            statements.clear()
            page, _ = store.orders(filters)
            assert {row["status"] for row in page} <= {filters.status}
            expected_rows = [
                i
                for i in range(20)
                if _STATUS_OF[i % 5] == filters.status
                and filters.side in (None, "BUY")
                and filters.request_id in (None, f"old-{i}")
                and filters.client_order_id in (None, f"o-{i}")
                and (filters.since is None or 1e9 + i >= filters.since)
                and (filters.until is None or 1e9 + i < filters.until)
            ]
            assert [row["request_id"] for row in page] == [f"old-{i}" for i in reversed(expected_rows)][
                : filters.limit
            ], filters
            if kind == "sqlite":
                [(sql, params)] = statements
                with db.connect() as connection:
                    plan = " ".join(
                        str(row[-1])
                        for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)
                    )
                assert f"USING INDEX {index} " in plan, (filters, plan)
    finally:
        db.dispose()
