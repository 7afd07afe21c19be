"""Test helpers for real subprocesses: start, wait for readiness, stop, and leave nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from email.message import Message
from pathlib import Path
from typing import Any

import psutil
import redis
import socketio
from redis.backoff import NoBackoff
from redis.retry import Retry

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_json(
    url: str,
    method: str = "GET",
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any, Message]:
    """One HTTP request with a JSON reply: (status, decoded body, response headers).

    `body` is sent as JSON (`raw` as given, instead); `token`, when not None, goes in an
    `Authorization: Bearer` header (an empty one included). Error statuses are returned, not
    raised; a server that cannot be reached gives status 0, body {} and no headers.
    """
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response), response.headers
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc), exc.headers
    except OSError:
        return 0, {}, Message()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


class ManagedProcess:
    """A child process with its output in a log file, stopped (and its children) on `stop()`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait()
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self._log.close()


class UpProcess:
    """`hean up` as a user runs it, its output in a log file (`pids()` parses its state lines)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in finish()
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "hean"), "up"],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> dict[str, int]:
        """The latest pid of every supervised process, from `hean up`'s state lines."""
        found: dict[str, int] = {}
        for name, state, pid in re.findall(r"process=(\S+) state=(\S+) pid=(\d+)", self.output()):
            if state == "RUNNING":
                found[name] = int(pid)
        return found

    def finish(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def redis_pid(self) -> int | None:
        """The private Redis server's pid, if `hean up` started one."""
        match = re.search(r"redis: private server pid=(\d+)", self.output())
        return int(match.group(1)) if match else None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, as Ctrl-C would: `hean up` stops everything, Redis last."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.finish()


def hean_up_env(home: Path) -> dict[str, str]:
    """The environment of a `hean up` of our own: no REDIS_URL (a private Redis), its own
    HEAN_HOME, free web and Flower ports, and a generated token."""
    from hean.redis_server import free_port

    env = dict(os.environ)
    for name in ("REDIS_URL", "HEAN_API_TOKEN"):
        env.pop(name, None)
    env.update(
        HEAN_HOME=str(home),
        HEAN_PORT=str(free_port()),
        HEAN_FLOWER_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    return env


def unauthenticated_client(port: int, password: str | None = None) -> redis.Redis:
    """A client of the Redis on 127.0.0.1:`port` without its password (or with a wrong one),
    which does not retry: redis-py retries a refused AUTH like a lost connection (~4 s)."""
    return redis.Redis(
        host="127.0.0.1", port=port, password=password, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )


#: Risk limits of the session's shared engine: every test that trades uses symbols of its own
#: and leaves its positions open, so the defaults (10 open positions, 3x leverage) would let
#: the suite's order, not the test, decide what gets rejected. A test that changes a limit
#: puts these back.
SHARED_RISK_LIMITS = {"max_open_positions": 100_000, "max_open_orders": 100_000, "max_leverage": "1000"}


def kill_own_connection(own: Any, client: redis.Redis) -> None:
    """Close the connection `own` (a hean.redis_client.OwnConnection) lends, from the server's
    side as a Redis restart does, by its id only: the session's other clients keep theirs."""
    conn = own.get_connection()
    conn.send_command("CLIENT", "ID")
    client_id = conn.read_response()
    own.release(conn)
    assert client.client_kill_filter(_id=client_id) == 1


def set_shared_risk_limits(system: dict[str, Any], **changes: Any) -> None:
    """risk_adjust the shared system's engine to SHARED_RISK_LIMITS (plus `changes`), and wait
    until it ran."""
    request_id = "risk-" + uuid.uuid4().hex
    body = {"command": "risk_adjust", "params": {**SHARED_RISK_LIMITS, **changes}, "request_id": request_id}
    status, ack, _ = http_json(system["url"] + "/api/commands", "POST", body, token=system["token"])
    assert status == 202, ack

    def result() -> Any:
        _, record, _ = http_json(system["url"] + f"/api/commands/{request_id}", token=system["token"])
        return record.get("result")

    outcome = wait_for(result, 60, "the shared risk limits to be set")
    assert outcome["success"], outcome  # type: ignore[index]


def system_journal(system: dict[str, Any]) -> Any:
    """The command journal of a running system: its Redis window and its database (the
    DATABASE_URL of its processes, else the SQLite file under its HEAN_HOME)."""
    from hean.command_journal import CommandJournal
    from hean.db import open_database
    from hean.history import HistoryStore

    env = system["env"]
    url = env.get("DATABASE_URL") or f"sqlite:///{Path(env['HEAN_HOME']).resolve() / 'hean.db'}"
    return CommandJournal(redis.Redis.from_url(env["REDIS_URL"]), HistoryStore(open_database(url)))


def recorded(journal: Any, request_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The journal's record of `request_id` once its envelope and result are in the database
    (the history writer copies them in batches, shortly after they happen)."""

    def complete() -> dict[str, Any] | None:
        record = journal.get(request_id)
        return record if record and record["envelope"] and record["result"] else None

    found: dict[str, Any] = wait_for(complete, timeout, f"the history of {request_id}")  # type: ignore[assignment]
    return found


def own_system_env(home: Path, redis_url: str, port: int, token: str, **extra: str) -> dict[str, str]:
    """The environment of a system of our own: its Redis, HEAN_HOME, web port and token."""
    home.mkdir(parents=True, exist_ok=True)
    return dict(
        os.environ,
        REDIS_URL=redis_url,
        HEAN_HOME=str(home),
        HEAN_PORT=str(port),
        HEAN_API_TOKEN=token,
        PYTHONUNBUFFERED="1",
        **extra,
    )


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def child_report(
    script: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> Any:
    """Run `script` in a Python child (`python -c`), which must exit 0; the JSON its last line of
    output holds (what it saw, for the test to assert on)."""
    argv = [sys.executable, "-c", script, *args]
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


RESULT_TIMEOUT_S = 30


class Client:
    """A python-socketio client that records `command_ack` and `command_result` events."""

    def __init__(self, url: str, token: str | None, **auth_extra: Any) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.acks: queue.Queue[dict[str, Any]] = queue.Queue()
        self.results: queue.Queue[dict[str, Any]] = queue.Queue()
        self.states: queue.Queue[dict[str, Any]] = queue.Queue()
        self._kept: dict[str, list[dict[str, Any]]] = {}
        self.sio.on("command_ack", self.acks.put)
        self.sio.on("command_result", self.results.put)
        self.sio.on("state_update", self.states.put)
        auth = {"token": token, **auth_extra} if token is not None else None
        self.sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)

    def close(self) -> None:
        self.sio.disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def command(self, payload: Any) -> dict[str, Any]:
        """Send `command`; returns the Socket.IO ack value after checking the ack event matches."""
        value = self.sio.call("command", payload, timeout=10)
        while True:  # skip acks of earlier fire-and-forget emits
            event = self.acks.get(timeout=10)
            if event["request_id"] == value["request_id"]:
                assert event == value
                return value

    def result_for(self, request_id: str) -> dict[str, Any]:
        """The next result for `request_id`. Results of other ids read meanwhile are kept for
        their own call: python-socketio hands each packet to a thread of its own, so results
        sent in order may be put here out of order."""
        kept = self._kept.get(request_id)
        if kept:
            return kept.pop(0)
        while True:
            result = self.results.get(timeout=RESULT_TIMEOUT_S)
            if result["request_id"] == request_id:
                return result
            self._kept.setdefault(result["request_id"], []).append(result)


def stop_engine_worker(system: dict[str, Any], crash: bool) -> None:
    """Stop the shared system's engine worker: SIGKILL (`crash`) or a warm shutdown."""
    processes: list[ManagedProcess] = system["processes"]
    worker = next(p for p in processes if p.name.startswith("worker-engine"))
    if crash:
        worker.process.send_signal(signal.SIGKILL)
    worker.stop()
    processes.remove(worker)


def start_engine_worker(system: dict[str, Any], logs_dir: Any) -> None:
    """Start a new engine worker in the shared system (the fixture stops it at the end)."""
    processes: list[ManagedProcess] = system["processes"]
    from hean.processes import PROCESSES

    spec = next(s for s in PROCESSES if s.name == "worker-engine")
    name = f"worker-engine-{uuid.uuid4().hex[:6]}"
    processes.insert(0, ManagedProcess(name, spec.argv(sys.executable), system["env"], logs_dir))


def restart_web(
    system: dict[str, Any],
    logs_dir: Any,
    crash: bool = False,
    while_frozen: Callable[[], object] | None = None,
) -> None:
    """Stop the shared system's web process and start a new one on the same port: SIGTERM, or
    with `crash` SIGKILL; `while_frozen` runs while the process is stopped (SIGSTOP) just before
    the kill, so what a client sends meanwhile is never read (as if it died mid-flight)."""
    processes: list[ManagedProcess] = system["processes"]
    web = next(p for p in processes if p.name.startswith("web"))
    if while_frozen is not None:
        os.kill(web.pid, signal.SIGSTOP)
        try:
            while_frozen()
        finally:
            os.kill(web.pid, signal.SIGKILL)
    elif crash:
        os.kill(web.pid, signal.SIGKILL)
    web.stop()
    processes.remove(web)
    from hean.processes import PROCESSES

    spec = next(s for s in PROCESSES if s.name == "web")
    name = f"web-{uuid.uuid4().hex[:6]}"
    processes.append(ManagedProcess(name, spec.argv(sys.executable), system["env"], logs_dir))
    wait_for(lambda: http_ok(str(system["url"]) + "/api/system/health"), 60, "the restarted web process")


#: Databases of the session's Redis that a test module's own analyzer system may use (the
#: shared system uses 0 and `redis_client` 1): one each, so a module's leftovers (a queued
#: report, a worker's heartbeat) never reach another's workers.
ANALYZER_DBS = {"test_error_analyzer_system": 3, "test_dashboard_browser": 4}


def start_analyzer_worker(env: dict[str, str], logs: Path) -> ManagedProcess:
    """A worker on the llm and default queues (`hean up`'s worker-llm) under a name of its own."""
    from hean.processes import PROCESSES

    spec = next(s for s in PROCESSES if s.name == "worker-llm")
    name = f"analyzer-worker-{uuid.uuid4().hex[:6]}"
    argv = spec.argv(sys.executable)
    argv[argv.index("-n") + 1] = f"{name}@%h"
    return ManagedProcess(name, argv, env, logs)


@contextlib.contextmanager
def running_analyzer_system(
    redis_url: str, db: int, openai_base_url: str, home: Path, logs: Path, **extra_env: str
) -> Iterator[dict[str, Any]]:
    """A web process and an llm worker of their own whose analyses go, through the real OpenAI
    SDK, to the local LLM server at `openai_base_url`; the failures on purpose of
    tests/plugins/analyzer_tasks.py loaded; their Prometheus series merged by the web's /metrics.

    Yields url, token, env, home, logs, processes (the worker first) and a Celery client
    (`celery`) to send tasks with.
    """
    from urllib.parse import urlsplit

    from celery import Celery

    from hean.redis_server import free_port

    url = urlsplit(redis_url)._replace(path=f"/{db}").geturl()
    port = free_port()
    token = "analyzer-token-" + uuid.uuid4().hex
    metrics_dir = home / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "ANTHROPIC", "LLM_"))},
        "REDIS_URL": url,
        "HEAN_HOME": str(home),
        "HEAN_PORT": str(port),
        "HEAN_API_TOKEN": token,
        "OPENAI_BASE_URL": openai_base_url,
        "OPENAI_API_KEY": "sk-system-test-0123456789abcdef",
        "HEAN_LLM_MAX_RETRIES": "0",
        "HEAN_COMMAND_MODULES": "analyzer_tasks",
        "PYTHONPATH": str(REPO_ROOT / "tests" / "plugins"),
        "PYTHONUNBUFFERED": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **extra_env,
    }
    processes = [
        start_analyzer_worker(env, logs),
        ManagedProcess("analyzer-web", [sys.executable, "-m", "web"], env, logs),
    ]
    base = f"http://127.0.0.1:{port}"
    client = Celery(broker=url)
    try:
        wait_for(lambda: http_ok(base + "/api/system/health"), 60, "the analyzer system's web process")
        yield {
            "home": home,
            "logs": logs,
            "env": env,
            "url": base,
            "token": token,
            "celery": client,
            "processes": processes,
        }
    finally:
        client.close()
        for process in reversed(processes):
            process.stop()


def analysis_rows(system: dict[str, Any]) -> list[Any]:
    """Every analysis in `system`'s database (its HEAN_HOME's hean.db), oldest first."""
    from sqlalchemy import select

    from hean.db import analyses, open_database

    db = open_database(f"sqlite:///{system['home'] / 'hean.db'}")
    try:
        with db.connect() as conn:
            return list(conn.execute(select(analyses).order_by(analyses.c.id)))
    finally:
        db.dispose()


def analysis_from(system: dict[str, Any], origin_prefix: str) -> Any:
    """The first finished analysis of an error caught at an origin starting `origin_prefix`."""
    found = [r for r in analysis_rows(system) if r.origin.startswith(origin_prefix) and r.status != "pending"]
    return found[0] if found else None


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of a Prometheus endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return samples(text)


def samples(text: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in found.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


# -- reconciliation (until `hean reconcile` lands: the fault tests end with this) ---------------


@dataclass
class Reconciliation:
    """What became of the orders a test had acked, by request id and client order id.

    `applied`: the engine a restarted worker would rebuild (snapshot + log in Redis) knows the
    order; `answered`: the journal holds its command's result with the order's outcome;
    `missing`: acked but not applied or not answered; `duplicated`: filled more than once (a
    symbol's position beyond its orders' fills) or told to the client with two different
    outcomes; `mismatched`: the client was told an outcome the engine does not hold; `unheard`:
    no result reached the client; `diverged`: symbols whose live position (published from the
    running engine) differs from the rebuilt one."""

    acked: int = 0
    applied: int = 0
    answered: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unheard: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.mismatched or self.unheard or self.diverged)

    def __str__(self) -> str:
        def few(items: list[str]) -> str:
            return f"{len(items)}{' ' + ','.join(items[:5]) if items else ''}"

        return (
            f"acked={self.acked} applied={self.applied} answered={self.answered} "
            f"missing={few(self.missing)} duplicated={few(self.duplicated)} "
            f"mismatched={few(self.mismatched)} unheard={few(self.unheard)} diverged={few(self.diverged)}"
        )


def _orders_of(envelope: dict[str, Any]) -> list[dict[str, Any]]:
    params = envelope.get("params") or {}
    if envelope.get("command") == "submit_orders":
        return list(params.get("orders") or [])
    return [params] if envelope.get("command") == "submit_order" else []


def _outcomes_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each order's outcome in a command's result, by client order id."""
    body = result.get("result") or {}
    rows = body.get("results") or ([body["order"]] if isinstance(body.get("order"), dict) else [])
    return {row["client_order_id"]: row for row in rows}


def reconcile(
    redis_url: str,
    database_url: str,
    acked: dict[str, list[str]],
    heard: dict[str, list[dict[str, Any]]] | None = None,
) -> Reconciliation:
    """Reconcile a test's record with the system on `redis_url` and its database (the
    envelopes come from the history, which the history writer fills shortly after).

    `acked`: per acked request id, the client order ids it carried; `heard`: per client order
    id, every outcome the client received (None: not recorded). The symbols of these orders
    must be traded by this record only (their positions are compared with their fills).
    Reads only: the engine is rebuilt in this process from the shard's snapshot and log, and
    each order is probed there (the core answers an order id it has seen with its first
    outcome, flagged `duplicate`).
    """
    from hean.command_journal import CommandJournal
    from hean.core.system.redis_state import get_sync_state_manager
    from hean.db import open_database
    from hean.engine import OrderBatch, TradingEngine
    from hean.history import HistoryStore
    from hean.topology import POSITIONS_KEY, SYSTEM_NAMESPACE
    from workers.shard import restore_engine

    report = Reconciliation()
    client = redis.Redis.from_url(redis_url)
    try:
        journal = CommandJournal(client, HistoryStore(open_database(database_url)))
        engine = TradingEngine()
        restore_engine(engine, client)
        live = get_sync_state_manager(redis_url).get_state(POSITIONS_KEY, namespace=SYSTEM_NAMESPACE) or []
    finally:
        client.close()
    probes: list[dict[str, Any]] = []
    answered: dict[str, dict[str, Any]] = {}
    for request_id, order_ids in acked.items():
        report.acked += len(order_ids)
        record = journal.get(request_id)
        envelope = (record or {}).get("envelope") or {}
        sent = {o["client_order_id"]: o for o in _orders_of(envelope)}
        outcomes = _outcomes_of((record or {}).get("result") or {})
        for cid in order_ids:
            if cid not in sent:  # the reservation itself is gone
                report.missing.append(cid)
                continue
            probes.append(sent[cid])
            if cid in outcomes:
                answered[cid] = outcomes[cid]
    report.answered = len(answered)
    rebuilt = {p.symbol: p.quantity for p in engine.positions()}  # before the probes
    expected: dict[str, Decimal] = {}
    if probes:
        probe = engine.submit_batch(OrderBatch.from_orders(probes))
        for i, order in enumerate(probes):
            cid, first = order["client_order_id"], probe.result(i)
            report.applied += first.duplicate
            if not first.duplicate or cid not in answered:
                report.missing.append(cid)
                continue
            filled = first.filled_quantity if order["side"] == "BUY" else -first.filled_quantity
            expected[order["symbol"]] = expected.get(order["symbol"], Decimal(0)) + filled
            told = {o.get("order_id") for o in (heard or {}).get(cid, [])}
            if len(told) > 1:
                report.duplicated.append(cid)
            if heard is not None and not told:
                report.unheard.append(cid)
            elif told and told != {first.order_id}:
                report.mismatched.append(cid)
    published = {p["symbol"]: Decimal(p["quantity"]) for p in live}
    for symbol, quantity in expected.items():
        if rebuilt.get(symbol, Decimal(0)) != quantity:
            report.duplicated.append(f"{symbol}:{rebuilt.get(symbol)}!={quantity}")
        if published.get(symbol) != rebuilt.get(symbol):
            report.diverged.append(f"{symbol}:live={published.get(symbol)},rebuilt={rebuilt.get(symbol)}")
    return report


def assert_reconciled(
    redis_url: str,
    database_url: str,
    acked: dict[str, list[str]],
    heard: dict[str, list[dict[str, Any]]] | None = None,
    timeout: float = 30.0,
) -> Reconciliation:
    """Poll `reconcile` until it shows nothing lost, duplicated or diverged (the live state is
    published at most every 100 ms, a result may still be on its way); fail with the last
    report after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        report = reconcile(redis_url, database_url, acked, heard)
        if report.ok or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"reconciliation: {report}")
    assert report.ok and report.acked == report.applied == report.answered, str(report)
    return report
