"""hean.client against the real system: the README's example as written, coalesced orders with
their own acks and results, per-order rejects, both faces, state subscriptions, and a reconnect
across a web restart."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import re
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hean.client import (
    AsyncClient,
    Client,
    ClientClosed,
    CommandRejected,
    ConnectionRefused,
    OrderHandle,
    OrderRejected,
)
from hean.command_journal import CommandJournal
from hean.core.system.redis_state import get_sync_state_manager
from support import (
    REPO_ROOT,
    recorded,
    restart_web,
    start_engine_worker,
    stop_engine_worker,
    system_journal,
    wait_for,
)

TIMEOUT = 30  # hang guard for one answer on a busy machine


@pytest.fixture
def hean(system: dict[str, Any]) -> Iterator[Client]:
    with Client(str(system["url"]), str(system["token"])) as client:
        yield client


def symbol() -> str:
    return "C" + uuid.uuid4().hex[:8].upper() + "USDT"


def running(client: Client, sym: str) -> dict[str, Any]:
    """Bring the shared engine to RUNNING (whatever earlier tests left) with a market for `sym`;
    returns the engine status."""
    if client.command("stop").wait(TIMEOUT)["state"] == "HALTED":
        client.command("reset_kill_switch").wait(TIMEOUT)
    client.command("update_market", {"symbol": sym, "bid": "99", "ask": "100", "last": "100"}).wait(TIMEOUT)
    status: dict[str, Any] = client.command("start").wait(TIMEOUT)
    assert status["state"] == "RUNNING"
    return status


def journal(system: dict[str, Any]) -> CommandJournal:
    journal: CommandJournal = system_journal(system)
    return journal


def readme_example(first_line: str, system: dict[str, Any]) -> list[str]:
    """Run the README's Python example that starts with `first_line` as a new user would copy
    it (only the URL and TOKEN are this system's); the lines it printed."""
    readme = (REPO_ROOT / "README.md").read_text()
    found = re.search(r"```python\n(" + re.escape(first_line) + r"\n.*?)```", readme, re.S)
    assert found, f"the README's example starting {first_line!r}"
    source = found.group(1).replace('"http://127.0.0.1:8000"', repr(system["url"]))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, "README.md", "exec"), {"TOKEN": system["token"], "__name__": "readme"})
    return printed.getvalue().splitlines()


def test_the_readmes_examples_run_as_written(system: dict[str, Any]) -> None:
    """The README's "Python client" examples, both faces: the engine starts, the paper market
    gets a price, the order fills, the engine's state is read back."""
    fill, state = readme_example("from hean.client import Client, OrderRejected", system)
    assert "'status': 'FILLED'" in fill and "'fill_price': '64001." in fill, fill
    assert state == "RUNNING"
    assert readme_example("import asyncio", system) == ["FILLED 64000.00000000", "RUNNING"]


def test_waiting_single_orders_go_out_as_one_command_each_with_its_own_ack_and_result(
    hean: Client, system: dict[str, Any]
) -> None:
    sym = symbol()
    running(hean, sym)
    handles = [hean.submit_order(sym, "BUY" if i % 2 else "SELL", "0.1") for i in range(60)]
    early = handles[-1].ack  # asked for before it settled (made on demand: hean.client._AckOnDemand)
    results = [h.wait(TIMEOUT) for h in handles]
    acks = [h.ack.result(0) for h in handles]
    assert handles[-1].ack is early and early.result(0) == acks[-1]

    assert [r["client_order_id"] for r in results] == [h.client_order_id for h in handles]
    assert {r["status"] for r in results} == {"FILLED"}
    assert all(a["accepted"] and a["request_id"] == h.request_id for a, h in zip(acks, handles, strict=True))
    carried: dict[str, list[str]] = defaultdict(list)
    for h in handles:
        carried[h.request_id].append(h.client_order_id)
    # submitted back to back: after the first event, the others waited for its ack together
    assert len(carried) < len(handles)
    assert max(len(ids) for ids in carried.values()) > 1
    commands = journal(system)
    for request_id, ids in carried.items():  # what the server received, in submit order
        record = recorded(commands, request_id)
        assert record["envelope"]["command"] == "submit_orders"
        assert [o["client_order_id"] for o in record["envelope"]["params"]["orders"]] == ids
        assert record["result"]["success"] is True


def test_each_order_of_a_batch_fails_alone(hean: Client) -> None:
    sym = symbol()
    running(hean, sym)
    handles = [hean.submit_order(sym, "BUY", "0.1") for _ in range(5)]
    too_big = hean.submit_order(sym, "BUY", "900")  # above max_notional: the engine rejects it
    invalid = hean.submit_order(sym, "BUY", "-1")  # the server's schema refuses it
    handles += [hean.submit_order(sym, "SELL", "0.1") for _ in range(5)]

    assert {h.wait(TIMEOUT)["status"] for h in handles} == {"FILLED"}
    with pytest.raises(OrderRejected) as rejected:
        too_big.wait(TIMEOUT)
    assert rejected.value.code == "order_rejected"
    assert rejected.value.order["reject_reason"] == "MAX_NOTIONAL"
    assert too_big.ack.result(0)["accepted"] is True  # its command was accepted; the order was not
    with pytest.raises(CommandRejected) as refused:
        invalid.wait(TIMEOUT)
    assert (refused.value.code, refused.value.field) == ("invalid_params", "params.quantity")
    assert isinstance(invalid.ack.exception(0), CommandRejected)


@pytest.mark.parametrize("coalesce", [True, False])
def test_orders_to_a_stopped_engine_fail_with_engine_stopped(system: dict[str, Any], coalesce: bool) -> None:
    sym = symbol()
    with Client(str(system["url"]), str(system["token"]), coalesce=coalesce) as client:
        running(client, sym)
        filled = client.submit_order(sym, "BUY", "0.1", client_order_id=f"ok-{uuid.uuid4().hex}")
        assert filled.wait(TIMEOUT)["client_order_id"] == filled.client_order_id
        assert client.command("stop").wait(TIMEOUT)["state"] == "STOPPED"
        refused = client.submit_order(sym, "BUY", "0.1")
        with pytest.raises(OrderRejected) as rejected:
            refused.wait(TIMEOUT)
        assert rejected.value.code == "engine_stopped"
        assert refused.ack.result(0)["command"] == ("submit_orders" if coalesce else "submit_order")


def test_sync_subscribe_state_gets_the_value_then_every_change(hean: Client, system: dict[str, Any]) -> None:
    key, states = "k" + uuid.uuid4().hex[:8], get_sync_state_manager(system["env"]["REDIS_URL"])
    states.set_state(key, {"n": 0}, namespace="clienttest")
    seen: list[Any] = []
    subscription = hean.subscribe_state(key, namespace="clienttest", callback=seen.append)
    assert subscription.get(TIMEOUT)["value"] == {"n": 0}
    for n in (1, 2):
        states.set_state(key, {"n": n}, namespace="clienttest")
        assert subscription.get(TIMEOUT)["value"] == {"n": n}
    assert [u["value"]["n"] for u in seen] == [0, 1, 2]
    subscription.close()


def test_async_face_orders_commands_and_state(system: dict[str, Any]) -> None:
    key, states = "k" + uuid.uuid4().hex[:8], get_sync_state_manager(system["env"]["REDIS_URL"])
    states.set_state(key, "before", namespace="clienttest")
    sym = symbol()

    async def scenario() -> None:
        async with AsyncClient(str(system["url"]), str(system["token"])) as client:
            subscription = await client.subscribe_state(key, namespace="clienttest")
            assert (await asyncio.wait_for(subscription.get(), TIMEOUT))["value"] == "before"
            if (await asyncio.wait_for(client.command("stop"), TIMEOUT))["state"] == "HALTED":
                await client.command("reset_kill_switch")
            market = {"symbol": sym, "bid": "99", "ask": "100", "last": "100"}
            await asyncio.wait_for(client.command("update_market", market), TIMEOUT)
            assert (await asyncio.wait_for(client.command("start"), TIMEOUT))["state"] == "RUNNING"
            handles: list[OrderHandle[asyncio.Future[Any]]] = [
                client.submit_order(sym, "BUY", "0.1") for _ in range(20)
            ]
            acks = await asyncio.wait_for(asyncio.gather(*(h.ack for h in handles)), TIMEOUT)
            assert all(a["accepted"] for a in acks)
            results = await asyncio.wait_for(asyncio.gather(*handles), TIMEOUT)
            assert [r["client_order_id"] for r in results] == [h.client_order_id for h in handles]
            batch = client.submit_orders([{"symbol": sym, "side": "SELL", "quantity": "0.1"}] * 3)
            outcome = await asyncio.wait_for(batch, TIMEOUT)
            assert (outcome["count"], outcome["filled"]) == (3, 3)
            with pytest.raises(CommandRejected) as refused:
                await asyncio.wait_for(client.command("no_such_command"), TIMEOUT)
            assert refused.value.code == "unknown_command"
            states.set_state(key, "after", namespace="clienttest")
            assert (await asyncio.wait_for(subscription.get(), TIMEOUT))["value"] == "after"

    asyncio.run(scenario())


def test_reconnect_after_a_web_restart_resubscribes_and_resends_each_command_once(
    system: dict[str, Any], logs_dir: Path
) -> None:
    key, states = "k" + uuid.uuid4().hex[:8], get_sync_state_manager(system["env"]["REDIS_URL"])
    states.set_state(key, 0, namespace="clienttest")
    sym = symbol()
    with Client(str(system["url"]), str(system["token"]), reconnection_delay=0.05) as client:
        subscription = client.subscribe_state(key, namespace="clienttest")
        assert subscription.get(TIMEOUT)["value"] == 0
        before = running(client, sym)
        stop_engine_worker(system, crash=False)  # commands now wait on the queue
        try:
            handles = [client.submit_order(sym, "BUY", "0.1") for _ in range(10)]
            assert all(h.ack.result(TIMEOUT)["accepted"] for h in handles)
            assert not any(h.result.done() for h in handles)
            restart_web(system, logs_dir)  # their results would have gone to the old connection
            wait_for(lambda: client.reconnects == 1 and client.connected, TIMEOUT, "the client to reconnect")
        finally:
            start_engine_worker(system, logs_dir)
        results = [h.wait(TIMEOUT) for h in handles]  # resent with the same ids until answered
        assert [r["client_order_id"] for r in results] == [h.client_order_id for h in handles]
        assert {r["status"] for r in results} == {"FILLED"}
        after = client.command("start").wait(TIMEOUT)
        assert after["orders_submitted"] - before["orders_submitted"] == len(handles)  # each ran once
        for request_id in {h.request_id for h in handles}:
            record = recorded(journal(system), request_id)
            assert record["result"]["success"] is True

        states.set_state(key, 1, namespace="clienttest")  # the subscription was renewed
        assert wait_for(lambda: _drain_until(subscription, 1), TIMEOUT, "the state update after reconnect")
        subscription.close()


def _drain_until(subscription: Any, value: Any) -> bool:
    try:
        return bool(subscription.get(0.2)["value"] == value)
    except (TimeoutError, concurrent.futures.TimeoutError):
        return False


def test_a_wrong_token_is_refused_and_a_closed_client_fails_what_is_pending(
    system: dict[str, Any], logs_dir: Path
) -> None:
    with pytest.raises(ConnectionRefused, match="unauthorized"):
        Client(str(system["url"]), "not-the-token", reconnection=False).connect()
    client = Client(str(system["url"]), str(system["token"]))
    client.connect()
    subscription = client.subscribe_state("k" + uuid.uuid4().hex[:8], namespace="clienttest")
    subscription.get(TIMEOUT)  # the current value (none yet)
    stop_engine_worker(system, crash=False)  # nothing will answer it
    try:
        handle = client.submit_order(symbol(), "BUY", "0.1")
        handle.ack.result(TIMEOUT)
        client.close()
        with pytest.raises(ClientClosed):
            handle.wait(TIMEOUT)
        with pytest.raises(ClientClosed):
            subscription.get(TIMEOUT)
        with pytest.raises(ClientClosed):
            client.command("start")
    finally:
        start_engine_worker(system, logs_dir)
