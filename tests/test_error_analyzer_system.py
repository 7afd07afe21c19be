"""The analyzer in a running system: real Celery workers on the llm queue, the web process, a crash.

A task that raises in a worker, a request that fails in the web process, and a worker killed
by a fatal signal each end as an analysis in the history (made through the real OpenAI SDK
against the local LLM server), which `GET /api/analyses` and `hean analyses` then show.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery
from sqlalchemy import select

from hean.db import analyses, open_database
from hean.processes import PROCESSES
from hean.redis_server import free_port
from llm_server import LLMServer
from support import Client, ManagedProcess, http_ok, wait_for

PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
SYSTEM_DB = 3  # a database of the session's Redis of its own (the shared system uses 0)


def start_worker(env: dict[str, str], logs: Path) -> ManagedProcess:
    spec = next(s for s in PROCESSES if s.name == "worker-llm")
    name = f"analyzer-worker-{uuid.uuid4().hex[:6]}"
    argv = spec.argv(sys.executable)
    argv[argv.index("-n") + 1] = f"{name}@%h"
    return ManagedProcess(name, argv, env, logs)


@pytest.fixture(scope="module")
def analyzer_system(
    redis_url: str, llm_server: LLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("analyzer-home")
    logs = tmp_path_factory.mktemp("analyzer-logs")
    url = urlsplit(redis_url)._replace(path=f"/{SYSTEM_DB}").geturl()
    port = free_port()
    token = "analyzer-token-" + uuid.uuid4().hex
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "ANTHROPIC", "LLM_"))},
        "REDIS_URL": url,
        "HEAN_HOME": str(home),
        "HEAN_PORT": str(port),
        "HEAN_API_TOKEN": token,
        "OPENAI_BASE_URL": llm_server.openai_base_url,
        "OPENAI_API_KEY": "sk-system-test-0123456789abcdef",
        "HEAN_LLM_MAX_RETRIES": "0",
        "HEAN_COMMAND_MODULES": "analyzer_tasks",
        "PYTHONPATH": str(PLUGINS_DIR),
        "PYTHONUNBUFFERED": "1",
    }
    processes = [
        start_worker(env, logs),
        ManagedProcess("analyzer-web", [sys.executable, "-m", "web"], env, logs),
    ]
    base = f"http://127.0.0.1:{port}"
    client = Celery(broker=url)
    try:
        wait_for(lambda: http_ok(base + "/api/system/health"), 60, "the web process")
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


def rows(system: dict[str, Any]) -> list[Any]:
    db = open_database(f"sqlite:///{system['home'] / 'hean.db'}")
    try:
        with db.connect() as conn:
            return list(conn.execute(select(analyses).order_by(analyses.c.id)))
    finally:
        db.dispose()


def analysis_from(system: dict[str, Any], origin_prefix: str) -> Any:
    found = [r for r in rows(system) if r.origin.startswith(origin_prefix) and r.status != "pending"]
    return found[0] if found else None


def get(system: dict[str, Any], path: str, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(system["url"] + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_failing_celery_task_ends_as_an_analysis(
    analyzer_system: dict[str, Any], llm_server: LLMServer
) -> None:
    analyzer_system["celery"].send_task("analyzer_tests.boom", queue="default")
    row = wait_for(
        lambda: analysis_from(analyzer_system, "celery_task:analyzer_tests.boom"), 90, "the analysis"
    )
    assert row.status == "ok" and row.exc_type == "ZeroDivisionError" and row.count == 1
    assert json.loads(row.suggestion)["root_cause"] == "the divisor can be zero"
    # the prompt pointed at the task's own code, with the suspect line marked
    prompt = next(
        r.json() for r in llm_server.requests_to("/v1/chat/completions") if b"analyzer_tests" in r.body
    )
    user = prompt["messages"][1]["content"]
    source = (PLUGINS_DIR / "analyzer_tasks.py").read_text().splitlines()
    line = source.index('    return balances[account] / balances["total"]') + 1
    assert f'File "tests/plugins/analyzer_tasks.py", line {line}, in settle   <-- suspect' in user
    assert "frame(s) in installed packages: celery" in user, user
    log = (analyzer_system["home"] / "logs" / "fix_suggestions.log").read_text()
    assert '"origin": "celery_task:analyzer_tests.boom"' in log


def test_a_failing_rest_view_ends_as_an_analysis(analyzer_system: dict[str, Any]) -> None:
    body = json.dumps({"command": "buggy_params", "params": {"currency": "XAU"}}).encode()
    request = urllib.request.Request(
        analyzer_system["url"] + "/api/commands",
        data=body,
        headers={"Authorization": f"Bearer {analyzer_system['token']}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(request, timeout=10)
    assert failed.value.code == 500
    row = wait_for(lambda: analysis_from(analyzer_system, "rest:POST /api/commands"), 90, "the REST analysis")
    assert row.exc_type == "KeyError" and row.status == "ok" and "XAU" in row.message


def test_a_failing_socketio_handler_ends_as_an_analysis(analyzer_system: dict[str, Any]) -> None:
    client = Client(analyzer_system["url"], analyzer_system["token"])
    try:
        client.sio.emit("command", {"command": "buggy_params", "params": {"currency": "XAG"}})
        row = wait_for(
            lambda: analysis_from(analyzer_system, "socketio:command"), 90, "the Socket.IO analysis"
        )
    finally:
        client.close()
    assert row.exc_type == "KeyError" and row.status == "ok" and "XAG" in row.message


def test_api_analyses_lists_the_history_with_counts(analyzer_system: dict[str, Any]) -> None:
    wait_for(lambda: analysis_from(analyzer_system, "celery_task:"), 90, "an analysis")
    assert get(analyzer_system, "/api/analyses", None)[0] == 401
    assert get(analyzer_system, "/api/analyses", "wrong")[0] == 401
    status, body = get(analyzer_system, "/api/analyses", analyzer_system["token"])
    assert status == 200
    origins = {a["origin"] for a in body["analyses"]}
    assert "celery_task:analyzer_tests.boom" in origins
    assert body["counts"]["analyses"] == len(body["analyses"]) and body["counts"]["model_calls"] >= 1
    first = next(a for a in body["analyses"] if a["origin"] == "celery_task:analyzer_tests.boom")
    assert first["suggestion"]["risk"] == "low" and first["input_tokens"] > 0
    status, body = get(analyzer_system, "/api/analyses?limit=0", analyzer_system["token"])
    assert status == 400 and body["error"]["field"] == "limit"
    status, body = get(analyzer_system, "/api/analyses?status=bogus", analyzer_system["token"])
    assert status == 400 and body["error"]["field"] == "status"
    status, body = get(analyzer_system, "/api/analyses?status=ok&limit=1", analyzer_system["token"])
    assert status == 200 and len(body["analyses"]) == 1 and body["analyses"][0]["status"] == "ok"


def test_hean_analyses_prints_them(analyzer_system: dict[str, Any]) -> None:
    wait_for(lambda: analysis_from(analyzer_system, "celery_task:"), 90, "an analysis")
    env = analyzer_system["env"]
    text = subprocess.run(
        [sys.executable, "-m", "hean.cli", "analyses"], env=env, capture_output=True, text=True, timeout=60
    )
    assert text.returncode == 0, text.stderr
    assert "ZeroDivisionError (celery_task:analyzer_tests.boom)" in text.stdout
    assert "cause: the divisor can be zero" in text.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "hean.cli", "analyses", "--json", "--status", "ok"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    data = json.loads(as_json.stdout)
    assert data["counts"]["analyses"] >= 1 and all(a["status"] == "ok" for a in data["analyses"])


def test_a_worker_killed_by_a_fatal_signal_is_analysed_after_the_restart(
    analyzer_system: dict[str, Any],
) -> None:
    processes: list[ManagedProcess] = analyzer_system["processes"]
    worker = processes[0]
    crashes = analyzer_system["home"] / "crashes"
    wait_for(lambda: list(crashes.glob("*.crash")), 30, "the worker's crash file")
    analyzer_system["celery"].send_task("analyzer_tests.segfault", queue="default")
    wait_for(lambda: not worker.alive(), 60, "the worker to die")
    assert worker.process.returncode == -signal.SIGSEGV
    [crash_file] = [p for p in crashes.glob("*.crash") if "Segmentation fault" in p.read_text()]
    assert "analyzer_tasks.py" in crash_file.read_text()
    worker.stop()
    processes[0] = start_worker(analyzer_system["env"], analyzer_system["logs"])
    row = wait_for(lambda: analysis_from(analyzer_system, "crash:"), 90, "the crash analysis")
    assert row.exc_type == "FatalError: Segmentation fault" and row.status == "ok"
    assert not crash_file.exists()
