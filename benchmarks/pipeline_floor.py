"""The least HEAN's single-order path can cost on this stack: bench_orders' floor of the whole
pipeline (design `floor1`), with HEAN's shape and none of its safeguards.

- web (Flask-SocketIO on eventlet, served like HEAN's web): `command` events taken as HEAN's
  command writer takes them (grouped_writes.py): one greenlet writes whatever waits after
  HEAN's intake linger onto a work list in one round trip (`RPUSH`), then acks each by a raw
  packet; another greenlet reads the
  worker's results from a pub/sub channel and sends each to the connection that sent its order.
- worker (a plain process, one engine): pops the first event (`BLMOVE` into an in-flight list),
  lingers HEAN's engine linger (`HEAN_ENGINE_LINGER_MS`), takes what waits into the in-flight
  list (one script), runs the orders of its `submit_order` commands through the compiled engine
  in columns (`OrderBatch.append_params`, `submit_batch`), then commits in one MULTI: the
  in-flight list emptied, one history stream entry with the results, one published message.
  While batches keep coming it lingers and takes again after each commit (one round trip per
  batch), as HEAN's engine worker does.

Nothing here validates a command, keeps a request id's window, marks a command started, writes
a result per key or copies anything into a database: each of those costs HEAN more than this.

    REDIS_URL=... python benchmarks/pipeline_floor.py web PORT
    REDIS_URL=... python benchmarks/pipeline_floor.py worker
"""

from __future__ import annotations

import json
import os
import sys
import time

WORK = "hean:bench:floor:work"
IN_FLIGHT = "hean:bench:floor:in-flight"
HISTORY = "hean:bench:floor:history"
RESULTS = "hean:bench:floor:results"
#: At most this many events per take (Lua's unpack takes a few thousand values at most).
TAKE_MAX = 1000

# KEYS[1] the work list, KEYS[2] the in-flight list; ARGV[1] how many at most
_TAKE = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
end
return items
"""


def serve_web(port: int) -> None:
    import eventlet

    eventlet.monkey_patch()
    import redis
    from flask import Flask
    from flask_socketio import SocketIO
    from grouped_writes import Pending, group_commands, send

    from web.server import serve

    app = Flask(__name__)
    sio = SocketIO(app, async_mode="eventlet", async_handlers=False)
    broker = redis.Redis.from_url(os.environ["REDIS_URL"])
    senders: dict[str, str] = {}  # request id -> the Engine.IO session that sent it

    def write(batch: list[Pending]) -> None:
        for eio_sid, _, data in batch:
            senders[data["request_id"]] = eio_sid
        broker.rpush(WORK, *[json.dumps(data) for _, _, data in batch])
        for eio_sid, ack_id, data in batch:
            if ack_id is not None:
                ack = json.dumps({"accepted": True, "request_id": data["request_id"]})
                send(sio, eio_sid, f"3{ack_id}[{ack}]")

    def results() -> None:
        pubsub = broker.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(RESULTS)
        for message in pubsub.listen():
            for result in json.loads(message["data"]):
                eio_sid = senders.pop(result["request_id"], None)
                if eio_sid is not None:
                    send(sio, eio_sid, f'2["command_result",{json.dumps(result)}]')

    group_commands(sio, write)
    sio.start_background_task(results)
    serve(app, "127.0.0.1", port)


def run_worker() -> None:
    import redis

    from hean.config import get_settings
    from hean.engine import OrderBatch, TradingEngine

    engine = TradingEngine(risk_limits={"max_orders_per_second": 0, "fee_rate": "0"})
    engine.update_market("BTCUSDT", "50000", "50001", "50000.5")
    engine.start()
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    take = client.register_script(_TAKE)
    linger_s = get_settings().engine_linger_ms / 1000.0
    chained = False
    while True:
        items: list[bytes] = []
        if not chained:
            first = client.blmove(WORK, IN_FLIGHT, 1.0, "LEFT", "RIGHT")
            if first is None:
                continue
            items.append(first)
        time.sleep(linger_s)
        items += take(keys=[WORK, IN_FLIGHT], args=[TAKE_MAX])
        if not items:
            chained = False
            continue
        commands = [json.loads(item) for item in items]
        batch = OrderBatch()
        for command in commands:
            batch.append_params(command["params"])
        results = [
            {"request_id": command["request_id"], "success": True, "orders": 1, "result": order}
            for command, order in zip(commands, engine.submit_batch(batch).to_dict()["results"], strict=True)
        ]
        payload = json.dumps(results)
        commit = client.pipeline(transaction=True)
        commit.delete(IN_FLIGHT)
        commit.xadd(HISTORY, {"results": payload}, maxlen=10_000, approximate=True)
        commit.publish(RESULTS, payload)
        commit.execute()
        chained = True


if __name__ == "__main__":
    if sys.argv[1:2] == ["web"]:
        serve_web(int(sys.argv[2]))
    elif sys.argv[1:2] == ["worker"]:
        run_worker()
    else:
        sys.exit("usage: pipeline_floor.py web PORT | worker")
