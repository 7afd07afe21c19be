"""`submit_orders` order lists read from the queued message's JSON text (issue 14 item 3): the
engine worker cuts each list out of a batch task's body unparsed (`hean._core.cut_order_lists`)
and reads it straight into the core's columns (`hean._core.read_order_json`). Both are
shortcuts: whenever they answer, the answer is exactly what parsing the JSON and reading it the
general way gives; for anything else they answer None and the general way runs."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_columns import random_order, read_by_python

from hean import _core
from hean.celery_wire import (
    MessageFrame,
    OrderListJSON,
    batch_envelopes,
    batch_frame,
    escape_envelope,
    loaded_params,
)
from hean.messages import envelope_json
from hean.topology import BATCH_TASKS, ENGINE_QUEUE
from workers.app import app

#: Generated JSON can be slow to make or large on a busy machine: not a failure of what is tested.
SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

ASCII_IDS = ["c-1", "order/7", "x" * 64, "a b", "{not}json[", "1234567890123456789012"]


def encodings(value: Any, rng: random.Random) -> str:
    """`value` as JSON, compact or spaced as other encoders write it (orjson, or the standard
    library for what orjson refuses: integers beyond 64 bits)."""

    def compact() -> str:
        try:
            return orjson.dumps(value).decode()
        except TypeError:
            return json.dumps(value, separators=(",", ":"))

    return rng.choice(
        [
            compact,
            lambda: json.dumps(value),
            lambda: json.dumps(value, indent=rng.choice([1, 2, "\t"])),
            lambda: json.dumps(value, separators=(" ,", " : "), ensure_ascii=False),
        ]
    )()


def plain_order(rng: random.Random, n: int) -> dict[str, Any]:
    order: dict[str, Any] = {
        "client_order_id": f"{rng.choice(ASCII_IDS)[:50]}-{n}",
        "symbol": "BTCUSDT",
        "side": rng.choice(["BUY", "SELL"]),
        "quantity": rng.choice(["0.001", "2", "7.25"]),
    }
    if rng.random() < 0.3:
        order.update(
            order_type="LIMIT", price=rng.choice(["90", "100.5"]), time_in_force=rng.choice(["GTC", "IOC"])
        )
    elif rng.random() < 0.3:
        order.update(order_type="MARKET", price=None)
    return order


def read_json_by_python(text: str | bytes) -> Any:
    return read_by_python(json.loads(text))


# -- the orders' reader -----------------------------------------------------------------------


def test_the_plain_form_is_read_from_text_as_from_the_parsed_params() -> None:
    rng = random.Random(3)
    for _ in range(2_000):
        orders = [plain_order(rng, n) for n in range(rng.choice([1, 2, 10, 100]))]
        text = encodings(orders, rng).encode()
        columns = _core.read_order_json(text)
        assert columns is not None, text
        assert columns.rows() == read_by_python(orders) == _core.read_order_params(orders).rows()
    assert _core.read_order_json(b"[]").rows() == []
    assert _core.read_order_json(b" [ ] \n").rows() == []


def test_any_order_list_is_read_the_same_or_left_to_the_general_way() -> None:
    rng = random.Random(14)
    read = 0
    for round_ in range(6_000):
        p_odd = 0.0 if round_ % 3 == 0 else rng.choice([0.02, 0.1, 0.4])
        orders = [random_order(rng, p_odd) for _ in range(rng.choice([1, 1, 2, 5, 40]))]
        try:
            text = encodings(orders, rng).encode()
        except (TypeError, ValueError, UnicodeEncodeError):  # not JSON (bytes, NaN, a lone surrogate)
            continue
        columns = _core.read_order_json(text)
        if columns is not None:
            read += 1
            assert columns.rows() == read_json_by_python(text), text
    assert read > 200  # the ids and symbols beyond ASCII or with escapes take the general way


@pytest.mark.parametrize(
    "text",
    [
        b'[{"client_order_id":"c","symbol":"S","side":"BUY","quantity":1}]',  # a number: the general way
        b'[{"client_order_id":"c","symbol":"S","side":"BU\\u0059","quantity":"1"}]',  # an escape
        b'[{"client_order_id":"\xc3\xa9","symbol":"S","side":"BUY","quantity":"1"}]',  # beyond ASCII
        b'[{"client_order_id":"c","symbol":"S","side":"BUY","quantity":"1","extra":[1]}]',
        b'[{"client_order_id":"c","symbol":"S","side":"BUY","quantity":"1"},]',  # not JSON
        b'[{"client_order_id":"c","symbol":"S","side":"BUY","quantity":"1"}] x',
        b'[{"client_order_id":"c","symbol":"S","side":"BUY","quantity":"1"}',
        b'{"client_order_id":"c","symbol":"S","side":"BUY","quantity":"1"}',
        b'[{"client_order_id":"c","symbol":"S","side":"BUY","quantity":"0.000000001"}]',  # not plain
        b'[{"client_order_id":"c","symbol":"S","side":"BUY","quantity":"1","price":"5"}]',  # priced market
        b'[{"client_order_id":"c","symbol":"S","side":"BUY","quantity":"1","side":null}]',  # the last counts
        b"[null]",
        b"",
    ],
)
def test_what_is_not_plain_is_left_to_the_general_way(text: bytes) -> None:
    assert _core.read_order_json(text) is None


def test_a_member_given_twice_counts_with_its_last_value() -> None:
    text = b'[{"client_order_id":"c","symbol":"S","side":"SELL","quantity":"5","side":"BUY","quantity":"1"}]'
    columns = _core.read_order_json(text)
    assert columns is not None
    assert columns.rows() == read_json_by_python(text) == [("c", "S", 0, 0, 0, 100_000_000, 0)]


@settings(max_examples=400, deadline=None, suppress_health_check=SLOW_DATA)
@given(st.data())
def test_damaged_text_is_never_read_as_something_else(data: st.DataObject) -> None:
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    text = bytearray(encodings([plain_order(rng, n) for n in range(rng.choice([1, 3]))], rng).encode())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.sampled_from(["cut", "insert", "replace"]))
        byte = data.draw(st.sampled_from(list(b'"\\{}[],:0 anu\x00\xc3')))
        if edit == "cut":
            del text[at:]
        elif edit == "insert":
            text[at:at] = bytes([byte])
        elif at < len(text):
            text[at] = byte
    columns = _core.read_order_json(bytes(text))
    if columns is not None:
        assert columns.rows() == read_json_by_python(bytes(text)), bytes(text)


# -- cutting the lists out of a batch task's body -----------------------------------------------


def reassembled(body: str) -> Any:
    """The body's value from `cut_order_lists`' answer (None when it did not cut)."""
    cut = _core.cut_order_lists(body)
    if cut is None:
        return None
    stripped, lists = cut
    value = json.loads(stripped)
    assert lists
    for index, text in lists:
        params = value[0][0][index]["params"]
        assert params["orders"] is None
        params["orders"] = json.loads(text)
    return value


def web_envelope(rng: random.Random, n: int) -> dict[str, Any]:
    command = rng.choice(["submit_orders", "submit_orders", "submit_order", "stop", "update_market"])
    params: dict[str, Any] = {"symbol": "BTCUSDT"}
    if command == "submit_orders":
        params = {"orders": [plain_order(rng, k) for k in range(rng.choice([1, 5]))]}
    elif command == "submit_order":
        params = plain_order(rng, n)
    return {
        "request_id": f"r-{n}",
        "command": command,
        "params": params,
        "reply_to": rng.choice([None, "sid-1"]),
        "received_at_ms": 1764659000123.25,
    }


def body_of(envelopes: list[Any], rng: random.Random) -> str:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return encodings([[envelopes], {}, embed], rng)


def test_the_web_s_bodies_are_cut_and_read_back_as_parsed() -> None:
    rng = random.Random(5)
    cut = 0
    for _ in range(1_000):
        envelopes = [web_envelope(rng, n) for n in range(rng.choice([1, 2, 6]))]
        body = body_of(envelopes, rng)
        value = reassembled(body)
        if any(e["command"] == "submit_orders" for e in envelopes):
            assert value == json.loads(body)
            cut += 1
        else:
            assert value is None  # nothing to cut: parsed whole
    assert cut > 300


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=SLOW_DATA)
@given(st.data())
def test_any_body_is_cut_into_what_parsing_it_gives_or_left_whole(data: st.DataObject) -> None:
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    envelopes: list[Any] = []
    for n in range(data.draw(st.integers(0, 4))):
        kind = data.draw(st.sampled_from(["web", "odd", "any"]))
        if kind == "web":
            envelopes.append(web_envelope(rng, n))
        elif kind == "odd":  # the names that matter, with anything in them, in any order
            members = data.draw(st.lists(st.sampled_from(["command", "params", "orders", "x"]), max_size=4))
            envelope = {}
            for name in members:
                envelope[name] = data.draw(
                    st.sampled_from(
                        [
                            "submit_orders",
                            {"orders": [plain_order(rng, n)]},
                            {"orders": "no list"},
                            [1],
                            None,
                        ]
                    )
                )
            envelopes.append(envelope)
        else:
            envelopes.append(data.draw(json_values))
    body = body_of(envelopes, rng)
    value = reassembled(body)
    assert value is None or value == json.loads(body)


@settings(max_examples=500, deadline=None, suppress_health_check=SLOW_DATA)
@given(st.data())
def test_a_damaged_body_is_never_cut(data: st.DataObject) -> None:
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    envelopes = [web_envelope(rng, n) for n in range(2)]
    envelopes[0]["command"] = "submit_orders"
    envelopes[0]["params"] = {"orders": [plain_order(rng, 0)]}
    text = list(body_of(envelopes, rng))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.sampled_from(["cut", "insert", "replace"]))
        char = data.draw(st.sampled_from([*'"\\{}[],:0 -.eE\x00\x1f\u00e9', "\\u12", "NaN", "\ud800"]))
        if edit == "cut":
            del text[at:]
        elif edit == "insert":
            text[at:at] = [char]
        elif at < len(text):
            text[at] = char
    body = "".join(text)
    try:
        expected = json.loads(body)
        orjson.loads(body.encode("utf-8", "surrogatepass"))
    except ValueError:  # not JSON (or not strict JSON): never cut
        assert _core.cut_order_lists(body) is None, body
    else:
        value = reassembled(body)
        assert value is None or value == expected, body


@pytest.mark.parametrize(
    "body",
    [
        # "command", "params" or "orders" twice, or a name spelled with an escape: parsed whole
        '[[[{"command":"submit_orders","params":{"orders":[]},"command":"stop"}]],{},{}]',
        '[[[{"command":"submit_orders","params":{"orders":[]},"params":{}}]],{},{}]',
        '[[[{"command":"submit_orders","params":{"orders":[],"orders":[1]}}]],{},{}]',
        '[[[{"command":"submit_orders","params":{"ord\\u0065rs":[]}}]],{},{}]',
        '[[[{"comm\\u0061nd":"x","command":"submit_orders","params":{"orders":[]}}]],{},{}]',
        # the command after its params, or not "submit_orders" exactly
        '[[[{"params":{"orders":[]},"command":"submit_orders"}]],{},{}]',
        '[[[{"command":"submit_order\\u0073","params":{"orders":[]}}]],{},{}]',
        '[[[{"command":"submit_order","params":{"orders":[]}}]],{},{}]',
        # not a batch body, not JSON, or JSON that orjson refuses
        '[[{"command":"submit_orders","params":{"orders":[]}}],{},{}]',
        '{"command":"submit_orders","params":{"orders":[]}}',
        '[[[{"command":"submit_orders","params":{"orders":[NaN]}}]],{},{}]',
        '[[[{"command":"submit_orders","params":{"orders":[]}}]],{},{}] []',
        '[[[{"command":"submit_orders","params":{"orders":["\x01"]}}]],{},{}]',
        '[[[{"command":"submit_orders","params":{"orders":[01]}}]],{},{}]',
        '[[[{"command":"submit_orders","params":{"orders":[' + "[" * 70 + "]" * 70 + "]}}]],{},{}]",
        '[[[{"command":"submit_orders","params":{"orders":["\ud800"]}}]],{},{}]',
    ],
)
def test_what_cannot_be_cut_for_sure_is_parsed_whole(body: str) -> None:
    assert _core.cut_order_lists(body) is None
    assert _core.cut_order_lists(body.encode("utf-8", "surrogatepass")) is None  # bytes: never


def test_the_lists_cut_are_where_the_envelopes_are() -> None:
    body = (
        '[[[{"command":"stop","params":{"orders":[1]}}, 7, {"command":"submit_orders","params":'
        '{"x":1,"orders":[{"a":"b"}]}}, {"command":"submit_orders","params":{"orders":"no"}}]], {}, {}]'
    )
    stripped, lists = _core.cut_order_lists(body)
    assert lists == [(2, b'[{"a":"b"}]')]
    assert json.loads(stripped)[0][0][2] == {"command": "submit_orders", "params": {"x": 1, "orders": None}}


# -- batch messages ------------------------------------------------------------------------------


def queued(frame: MessageFrame, envelopes: list[dict[str, Any]]) -> str:
    """The message the web's reservation script builds for `envelopes`."""
    encoded = [
        envelope_json(
            e["request_id"],
            e["command"],
            orjson.dumps(e["params"]).decode(),
            e["reply_to"],
            e["received_at_ms"],
        )
        for e in envelopes
    ]
    return frame.message([escape_envelope(text) for text in encoded], [e["request_id"] for e in envelopes])


def test_a_queued_batch_reads_back_the_same_with_its_order_lists_left_as_text() -> None:
    rng = random.Random(9)
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], ENGINE_QUEUE, "batch-1", "x")
    for _ in range(300):
        envelopes = [web_envelope(rng, n) for n in range(rng.choice([1, 3, 8]))]
        raw = queued(frame, envelopes)
        whole = batch_envelopes(raw)
        assert whole == envelopes
        cut = batch_envelopes(raw, cut_orders=True)
        assert [{**e, "params": loaded_params(e["params"])} for e in cut] == whole
        for envelope, original in zip(cut, envelopes, strict=True):
            orders = envelope["params"].get("orders")
            assert isinstance(orders, OrderListJSON) == (original["command"] == "submit_orders")
            if isinstance(orders, OrderListJSON):
                columns = orders.columns()
                assert columns is not None
                assert columns.rows() == read_by_python(original["params"]["orders"])


@pytest.mark.parametrize("odd", ["NaN", "123456789012345678901234567890", '"\\ud800"'])
def test_a_message_orjson_reads_otherwise_or_refuses_gives_the_same_envelopes(odd: str) -> None:
    rng = random.Random(2)
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], ENGINE_QUEUE, "batch-1", "x")
    envelopes = [web_envelope(rng, n) for n in range(4)]
    raw = queued(frame, envelopes).replace("{", '{"odd": ' + odd + ", ", 1)
    assert batch_envelopes(raw) == envelopes
    cut = batch_envelopes(raw, cut_orders=True)
    assert [{**e, "params": loaded_params(e["params"])} for e in cut] == envelopes


def test_a_batch_delivered_by_the_transport_has_its_order_lists_left_as_text() -> None:
    """The message as kombu's transports build it from the queued text (their Message encodes
    the body to UTF-8 bytes): read as the taken-along batches are, with the same values as
    kombu's decode. Read as a str only, every delivered batch was parsed whole, each order a
    Python dict read again by hean.engine.orders_from_params."""
    from kombu import Connection

    from workers.engine import _delivered_body

    rng = random.Random(12)
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], ENGINE_QUEUE, "batch-1", "x")
    with Connection("memory://") as connection:
        channel = connection.default_channel
        for _ in range(50):
            envelopes = [web_envelope(rng, n) for n in range(rng.choice([1, 3]))]
            message = channel.message_to_python(orjson.loads(queued(frame, envelopes)))
            assert isinstance(message.body, bytes)
            read = _delivered_body(message)
            as_text = [isinstance(e["params"].get("orders"), OrderListJSON) for e in read[0][0]]
            assert any(as_text) == any(e["command"] == "submit_orders" for e in envelopes)
            read[0][0] = [{**e, "params": loaded_params(e["params"])} for e in read[0][0]]
            assert read == message.decode()
            assert read[0][0] == envelopes
        # not UTF-8: kombu's reader and its error, as before
        broken = channel.message_to_python(orjson.loads(queued(frame, [web_envelope(rng, 0)])))
        assert b'"request_id"' in broken.body
        broken.body = broken.body.replace(b'"request_id"', b'"\xffrequest_id"', 1)
        with pytest.raises(Exception) as kombu_error:
            broken.decode()
        with pytest.raises(type(kombu_error.value)):
            _delivered_body(broken)


def test_a_delivered_batch_reads_as_kombu_decodes_it_with_its_order_lists_left_as_text() -> None:
    from kombu.message import Message

    from workers.engine import _delivered_body

    rng = random.Random(11)

    def message(body: str) -> Message:
        return Message(
            body=body, content_type="application/json", content_encoding="utf-8", accept={"application/json"}
        )

    for _ in range(200):
        envelopes = [web_envelope(rng, n) for n in range(rng.choice([1, 3]))]
        body = body_of(envelopes, rng)
        read = _delivered_body(message(body))
        as_text = [isinstance(e["params"].get("orders"), OrderListJSON) for e in read[0][0]]
        assert any(as_text) == any(e["command"] == "submit_orders" for e in envelopes)
        read[0][0] = [{**e, "params": loaded_params(e["params"])} for e in read[0][0]]
        assert read == message(body).decode()
    # kombu's typed values, or another content type: kombu decodes it
    typed = body_of(
        [{**web_envelope(rng, 0), "command": "submit_orders", "params": {"orders": [{"__type__": "x"}]}}], rng
    )
    assert _delivered_body(message(typed)) == message(typed).decode()
