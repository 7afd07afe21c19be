"""The one place that knows Celery's wire format on kombu's Redis transport: building the
batch-task messages the web process pushes onto a queue itself, and reading the ones the
engine worker takes off a queue itself.

Why: one Lua script reserves a batch's request ids and pushes exactly the new commands as one
Celery task, in one atomic round trip (hean/command_journal.py), and the engine worker takes
batches waiting behind the one Celery delivered in one script too (workers/engine.py). Both
must produce and read byte-compatible messages. tests/test_celery_wire.py compares what this
module builds with what Celery and kombu publish themselves (headers, properties and body) for
the installed versions, and fails when either side changes: pyproject.toml bounds celery and
kombu to the tested series for that reason.

It also builds the small messages the background sends ten times a second (celery beat's
pulse, the pulse's ping of the engine worker): `TaskMessage`, rendered in a few microseconds
and pushed with one LPUSH, where Celery's own `send_task` costs about a millisecond of CPU.

It also knows kombu's bookkeeping of delivered, unacknowledged messages, so that a restarted
engine worker can take back what its dead predecessor held (`reclaim_unacked`).

Message layout (kombu's Redis transport, Celery protocol 2): a JSON object with ``body`` (the
JSON text ``[args, kwargs, embed]``, here ``[[envelopes], {}, {callbacks...}]``),
``content-encoding``, ``content-type``, ``headers`` (the task's protocol-2 headers) and
``properties`` (with ``delivery_info`` and a ``delivery_tag`` unique per message, by which
kombu tracks unacknowledged messages). kombu itself base64-encodes the body
(``properties.body_encoding``); the messages built here carry it as plain JSON, which the
transport hands to the worker as is.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import socket
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import orjson

from hean import fastjson
from hean.process_wide import ProcessWide
from hean.redis_client import run_script

if TYPE_CHECKING:  # the library imports no Celery at run time; callers hand in their app
    import redis
    from celery import Celery

    from hean import _core  # the web process never loads the core: imported where it is used


@dataclass(frozen=True)
class MessageFrame:
    """A broker message around a JSON body of ``head + envelopes + tail``, as text pieces.

    ``prefix`` and ``suffix`` are the encoded message before and after its body string; the
    body pieces are already escaped for use inside that string, as the envelopes must be.
    """

    prefix: str
    suffix: str
    body_head: str
    body_tail: str

    def __post_init__(self) -> None:
        if not self.prefix.startswith("{"):
            raise ValueError("a message frame's prefix opens the message's JSON object")

    def message(self, escaped_envelopes: list[str], request_ids: Sequence[str] = ()) -> str:
        """The whole message, from envelopes already escaped by `escape_envelope` and with their
        request ids in its first field (`IDS_FIELD`): what the journal's Lua script builds on
        the server."""
        body = f'"{self.body_head}{",".join(escaped_envelopes)}{self.body_tail}"'
        return f'{{"{IDS_FIELD}": "{" ".join(request_ids)}", {self.prefix[1:]}{body}{self.suffix}'


#: The first field of a batch message the web pushes: its commands' request ids, separated by
#: spaces (a request id is [A-Za-z0-9._:-], hean.messages.REQUEST_ID_PATTERN, so it needs no
#: escaping), so that a Lua script can read them without decoding the message (the engine
#: worker's take marks the commands it takes along started: workers/shard.py). kombu and Celery
#: ignore a field they do not know.
IDS_FIELD = "hean_ids"
#: Lua pattern capturing `IDS_FIELD` of a queued message (json.dumps's spacing or none).
IDS_LUA_PATTERN = '^{"' + IDS_FIELD + '": ?"([^"]*)"'


def escape_envelope(encoded: str) -> str:
    """An encoded envelope (JSON text) escaped for use inside the message's body string.

    By orjson (hean.fastjson): the intake escapes every envelope it enqueues, and the standard
    library's encoder took ~15 us for a 100-order command, orjson ~1.5 us. Characters beyond
    ASCII stay as they are (valid in a JSON string) where the standard library writes \\u
    escapes: the same string once decoded."""
    return fastjson.dumps(encoded)[1:-1]


_BODY = "__HEAN_BODY__"
_BODY_TAIL = ']], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
_TASK_ID = "__HEAN_TASK_ID__"
_ARGSREPR = "__HEAN_ARGSREPR__"
_DELIVERY_TAG = "__HEAN_DELIVERY_TAG__"


def batch_frame(
    celery_app: Celery, task_name: str, queue_name: str, task_id: str, commands: str
) -> MessageFrame:
    """The Celery message for `task_name(envelopes)` on `queue_name`, as kombu's Redis transport
    stores it on the queue's list, with the envelope list left to fill in.

    Built by Celery's own `as_task_v2` once per app, task and queue (cached with placeholders
    for the task id, the summary and a fresh delivery tag per message): about 10 us a batch
    instead of 60.
    """
    prefix, suffix = _frame_template(celery_app, task_name, queue_name)
    for placeholder, value in (
        (_TASK_ID, task_id),
        # a short summary for Flower instead of every command (cheaper, and no order details)
        (_ARGSREPR, f"[commands: {commands}]"),
        (_DELIVERY_TAG, delivery_tag()),
    ):
        suffix = suffix.replace(placeholder, json.dumps(value)[1:-1])
    return MessageFrame(prefix=prefix, suffix=suffix, body_head="[[[", body_tail=json.dumps(_BODY_TAIL)[1:-1])


#: This process's delivery tags: a random prefix and a count (a forked child makes its own)
_tags: ProcessWide[tuple[str, itertools.count[int]]] = ProcessWide(
    lambda: (uuid.uuid4().hex, itertools.count())
)
os.register_at_fork(after_in_child=lambda: _tags.set(None))


def delivery_tag() -> str:
    """A delivery tag no other message has (kombu keys the unacknowledged ones by it): a random
    prefix of this process and a count. A uuid4 per message cost about 2.4 us, most of it the
    system call for its randomness."""
    prefix, count = _tags.get()
    return f"{prefix}-{next(count)}"


def _queued_text(message: Any, queue_name: str) -> str:
    """`message` (from ``as_task_v2``) as kombu's Redis transport keeps it on `queue_name`, with
    the body and the delivery tag as placeholders."""
    return json.dumps(
        {
            "body": _BODY,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": message.headers,
            "properties": {
                **message.properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue_name},
                "priority": 0,
                "delivery_tag": _DELIVERY_TAG,
            },
        }
    )


@functools.lru_cache(maxsize=32)
def _frame_template(celery_app: Celery, task_name: str, queue_name: str) -> tuple[str, str]:
    message = celery_app.amqp.as_task_v2(
        _TASK_ID, task_name, args=(), kwargs={}, argsrepr=_ARGSREPR, kwargsrepr="{}", ignore_result=True
    )
    text = _queued_text(message, queue_name)
    prefix, suffix = text.split(json.dumps(_BODY))
    return prefix, suffix


def task_marker(task_name: str) -> str:
    """A substring every queued message of `task_name` contains (and no other task's does):
    the Lua script that takes batches off a queue stops at the first message without it."""
    return json.dumps({"task": task_name})[1:-1]


def batch_envelopes(raw: bytes | str, cut_orders: bool = False) -> list[dict[str, Any]]:
    """The envelopes a queued batch message carries, whether this module or kombu encoded it.

    With `cut_orders`, the order list of each `submit_orders` envelope is left as the JSON text
    it was queued as, an `OrderListJSON` in its params (`hean._core.cut_order_lists`, when the
    body is plain enough to cut, else it is parsed whole): the engine worker reads those lists
    straight into the core's columns, without a Python object per order. Its envelopes are
    otherwise the same values; `loaded_params` parses such a list where a handler needs it.

    Raises ValueError (or KeyError, IndexError, TypeError) for anything else.
    """
    try:
        # Only the body and its encoding are read, strings, which orjson reads exactly whatever
        # else the message holds (fastjson's scan for long integers took a tenth of the time)
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:  # the standard library's value or its error
        message = fastjson.loads(raw)
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    cut = batch_body_cut(body) if cut_orders else None
    return list((cut if cut is not None else fastjson.loads(body))[0][0])


def batch_body_cut(body: str | bytes) -> list[Any] | None:
    """A batch task's body, parsed, with the order list of each `submit_orders` envelope left
    as the JSON text it was queued as (an `OrderListJSON` in its params); None when there is
    none to cut or the body is not plain enough to cut it (`hean._core.cut_order_lists`): then
    parse it whole, for the same values otherwise."""
    if not isinstance(body, str) or '"submit_orders"' not in body:  # nothing to cut
        return None
    from hean import _core

    cut = _core.cut_order_lists(body)
    if cut is None:
        return None
    stripped, lists = cut
    value = fastjson.loads(stripped)
    envelopes = value[0][0]
    for index, orders in lists:
        envelopes[index]["params"]["orders"] = OrderListJSON(orders)
    return cast(list[Any], value)


class OrderListJSON:
    """A `submit_orders` command's order list as the JSON text it was queued as (see
    `batch_envelopes`)."""

    __slots__ = ("json",)

    def __init__(self, json: bytes) -> None:
        self.json = json

    def columns(self) -> _core.OrderColumns | None:
        """The orders in the core's columns, read from the text (`hean._core.read_order_json`);
        None when the text or an order is not in the plain form the edge sends: then `load()`
        and read them the general way (hean.engine.orders_from_params)."""
        from hean import _core

        return _core.read_order_json(self.json)

    def load(self) -> Any:
        """The list, parsed."""
        return fastjson.loads(self.json)

    def __repr__(self) -> str:
        return f"OrderListJSON({self.json[:60]!r}{'...' if len(self.json) > 60 else ''})"


def loaded_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with an order list that `batch_envelopes` left as JSON parsed (a copy), or
    `params` itself."""
    orders = params.get("orders")
    return {**params, "orders": orders.load()} if isinstance(orders, OrderListJSON) else params


_EXPIRES = "__HEAN_EXPIRES__"
_ARGS = "__HEAN_ARGS__"
_EMBED = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'


@dataclass(frozen=True)
class TaskMessage:
    """One task's message on one queue, as kombu's Redis transport stores it, with the fields
    that change per message (task id, expiry, arguments, delivery tag) left to fill in.

    Built once by Celery's own `as_task_v2` (`task_message`); `render` fills it in.
    """

    queue: str
    template: str

    def render(self, task_id: str, expires: float | None = None, args: Sequence[Any] = ()) -> str:
        """The message for a call `task(*args)` with id `task_id`, expiring at the epoch time
        `expires` (as Celery's `expires=` option: an ISO 8601 UTC time in the headers)."""
        expiry = "null" if expires is None else json.dumps(datetime.fromtimestamp(expires, UTC).isoformat())
        arguments = list(args)
        body = f"[{json.dumps(arguments)}, {{}}, {_EMBED}]"
        text = (
            self.template.replace(f'"{_EXPIRES}"', expiry)
            .replace(_TASK_ID, json.dumps(task_id)[1:-1])
            .replace(_DELIVERY_TAG, delivery_tag())
        )
        # last, once each: what the caller's arguments bring cannot be taken for a placeholder
        argsrepr = repr(arguments) if arguments else "()"  # as Celery shows no arguments
        text = text.replace(_ARGSREPR, json.dumps(argsrepr)[1:-1], 1)
        return text.replace(_BODY, json.dumps(body)[1:-1], 1)


@functools.lru_cache(maxsize=32)
def task_message(celery_app: Celery, task_name: str, queue_name: str, **headers: Any) -> TaskMessage:
    """The template of `task_name`'s messages on `queue_name` (extra protocol-2 `headers`, such
    as beat's ``celery_beat_task``, included); cached per app, task, queue and headers."""
    message = celery_app.amqp.as_task_v2(
        _TASK_ID,
        task_name,
        args=(),
        kwargs={},
        expires=_EXPIRES,
        argsrepr=_ARGSREPR,
        kwargsrepr="{}",
        ignore_result=True,
    )
    message.headers.update(headers)
    text = _queued_text(message, queue_name)
    return TaskMessage(queue=queue_name, template=text)


# -- kombu's bookkeeping of delivered, unacknowledged messages --------------------------------

#: kombu's Redis transport keeps each delivered, unacknowledged message in this hash (delivery
#: tag -> JSON [message, exchange, routing key]) and its delivery time in this sorted set, and
#: puts it back on its queue only once it is older than the visibility timeout.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"

# KEYS: the unacked hash, its index, the queue; ARGV: delivery tag, message, ... (in push
# order). Each message still unacknowledged goes back to the consuming end of the queue.
_RECLAIM = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('RPUSH', KEYS[3], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""


def _mark_redelivered(message: dict[str, Any]) -> None:
    """Mark a decoded queued message redelivered, as kombu marks what it restores (KeyError if it
    is not shaped like one)."""
    message["headers"]["redelivered"] = True
    message["properties"]["delivery_info"]["redelivered"] = True


def reclaim_unacked(client: redis.Redis, queue: str) -> int:
    """Put every message delivered from `queue` and never acknowledged back at the consuming
    end of the queue at once (marked redelivered, the oldest to be consumed first), instead of
    after the visibility timeout; returns how many.

    Only for a queue with exactly one consumer, called by that consumer before it starts
    consuming: then every such message was held by a consumer that died.
    """
    # replies are bytes (HEAN's clients do not decode)
    index = cast(list[tuple[bytes, float]], client.zrange(UNACKED_INDEX_KEY, 0, -1, withscores=True))
    delivered_at = dict(index)
    picked: list[tuple[float, bytes, str]] = []
    for tag, raw in cast(dict[bytes, bytes], client.hgetall(UNACKED_KEY)).items():
        try:
            message, _exchange, routing_key = json.loads(raw)
            if routing_key != queue:
                continue
            _mark_redelivered(message)
        except (ValueError, TypeError, KeyError):
            continue  # not a message of ours to judge: kombu restores it in its own time
        picked.append((delivered_at.get(tag, 0.0), tag, json.dumps(message)))
    if not picked:
        return 0
    picked.sort(key=lambda entry: entry[0], reverse=True)  # the newest pushed first
    args = [part for _, tag, message in picked for part in (tag, message)]
    return int(run_script(client.connection_pool, _RECLAIM, [UNACKED_KEY, UNACKED_INDEX_KEY, queue], args))


# -- who holds a delivered message (workers/transport.py) ------------------------------------

#: For a queue with several consumers (the llm and default queues), who holds each message in
#: the unacked hash: delivery tag -> the holding process's id (`holder_id`). Each holder keeps
#: a lease (`lease_key`, LEASE_S long), renewed at each delivery it records and every second by
#: its worker's heartbeat; a message whose holder's lease lapsed (the process was killed) goes
#: back to its queue at the next check of any consumer, instead of after the visibility timeout.
#: The price: a worker cut off from Redis (or frozen) for longer than a lease while it runs a
#: command may see that command run again elsewhere, as the visibility timeout allowed after an
#: hour; a Redis that restarted lets no lease lapse for that (workers/transport.py).
HOLDERS_KEY = "hean:unacked:holders"
LEASE_S = 20
_holder: list[tuple[int, str]] = []  # (pid, id) of this process, made again after a fork


def holder_id() -> str:
    """This process's id as a holder of delivered messages: host, pid and a random part (a
    restarted worker, with the same node name, and a recycled pid are someone else)."""
    pid = os.getpid()
    if not _holder or _holder[0][0] != pid:
        _holder[:] = [(pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")]
    return _holder[0][1]


def lease_key(holder: str) -> str:
    """The key that exists while `holder` lives (see HOLDERS_KEY)."""
    return f"hean:consumer:{holder}"


# -- atomic delivery (workers/transport.py) ---------------------------------------------------


def delivering_key(queue: str) -> str:
    """The list a message of `queue` (popped atomically) sits in from its pop until it is
    acknowledged (workers/transport.py)."""
    return f"hean:delivering:{queue}"


# KEYS: the delivering list, the queue[, the queue's owner key]; ARGV: pairs of (message as
# held, message marked redelivered), newest first[, then the caller's holder id]. Each one still
# held goes onto the consuming end, so that the oldest is consumed first. With an owner key, only
# while it holds the caller's id (-1 otherwise, nothing moved).
_RESTORE_HELD = """
local last = #ARGV
if #KEYS == 3 then
  if redis.call('GET', KEYS[3]) ~= ARGV[last] then
    return -1
  end
  last = last - 1
end
local n = 0
for i = 1, last, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""


def redelivered(raw: bytes) -> bytes:
    """A queued message as kombu restores it: marked redelivered (HeanTask counts those, so a
    message that keeps killing its worker stops looping). Unreadable: as it is."""
    try:
        message = json.loads(raw)
        _mark_redelivered(message)
    except (ValueError, TypeError, KeyError):
        return raw
    return json.dumps(message).encode()


class NotTheOwner(RuntimeError):
    """A restore fenced by a queue's owner key found another process's id in it."""


def restore_held(client: redis.Redis, queue: str, *messages: bytes, owner_key: str | None = None) -> int:
    """Put `messages` (newest first) back at the consuming end of `queue`, each only if it is
    still in the queue's delivering list (so never twice), marked redelivered; returns how many.

    With `owner_key` (the key that names the queue's one consumer), only while it names this
    process (`holder_id`): raises NotTheOwner otherwise, nothing moved."""
    args = [part for raw in messages for part in (raw, redelivered(raw))]
    keys = [delivering_key(queue), queue]
    if owner_key is not None:
        keys.append(owner_key)
        args.append(holder_id().encode())
    restored = int(run_script(client.connection_pool, _RESTORE_HELD, keys, args))
    if restored < 0:
        raise NotTheOwner(f"{owner_key} does not name this process")
    return restored


def restore_delivering(
    client: redis.Redis, queue: str, keep: Collection[bytes] = (), owner_key: str | None = None
) -> int:
    """Put every message popped from `queue` and not acknowledged (its consumer died or lost
    the reply, or a consumer replaced meanwhile popped it) back at the consuming end of the
    queue, marked redelivered; returns how many. The messages in `keep` (the caller's own,
    delivered and not yet acknowledged) stay; `owner_key` as for `restore_held`.

    Only for a queue with exactly one consumer, called by that consumer while it is not
    delivering: then nothing else in the list is being delivered."""
    held = cast(list[bytes], client.lrange(delivering_key(queue), 0, -1))  # newest first
    strays = [raw for raw in held if raw not in keep]
    return restore_held(client, queue, *strays, owner_key=owner_key) if strays else 0
