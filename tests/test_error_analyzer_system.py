"""The analyzer in a running system: real Celery workers on the llm queue, the web process, a crash.

A task that raises in a worker, a request that fails in the web process, and a worker killed
by a fatal signal each end as an analysis in the history (made through the real OpenAI SDK
against the local LLM server), which `GET /api/analyses` and `hean analyses` then show.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_server import LLMServer
from support import (
    ANALYZER_DBS,
    Client,
    ManagedProcess,
    Samples,
    analysis_from,
    running_analyzer_system,
    scrape,
    start_analyzer_worker,
    total,
    wait_for,
)

PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"


@pytest.fixture(scope="module")
def analyzer_system(
    redis_url: str, llm_server: LLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("analyzer-home")
    logs = tmp_path_factory.mktemp("analyzer-logs")
    db = ANALYZER_DBS["test_error_analyzer_system"]
    with running_analyzer_system(redis_url, db, llm_server.openai_base_url, home, logs) as system:
        yield system


def get(system: dict[str, Any], path: str, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(system["url"] + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:  # an unclosed error keeps its socket until the garbage collector warns
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
    # the log line follows the database row: wait for it rather than read once (it was read
    # empty once, on a busy machine)
    log_path = analyzer_system["home"] / "logs" / "fix_suggestions.log"
    wait_for(
        lambda: log_path.exists() and '"origin": "celery_task:analyzer_tests.boom"' in log_path.read_text(),
        10,
        "the analysis in fix_suggestions.log",
    )


def test_a_command_handler_that_raises_ends_as_an_analysis(analyzer_system: dict[str, Any]) -> None:
    """The batch task catches a handler's exception (the command fails with `command_failed`,
    the worker goes on), so Celery's task_failure never sees it: it is reported by itself."""
    body = json.dumps({"command": "settle_account", "params": {"account": "bob"}}).encode()
    request = urllib.request.Request(
        analyzer_system["url"] + "/api/commands",
        data=body,
        headers={"Authorization": f"Bearer {analyzer_system['token']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
    row = wait_for(lambda: analysis_from(analyzer_system, "command:settle_account"), 90, "the analysis")
    assert row.exc_type == "ZeroDivisionError" and row.status == "ok"


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
    # closed here: left to the garbage collector, its socket warned in whichever test ran then
    failed.value.close()
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


def test_each_model_call_moves_the_llm_series_of_metrics(analyzer_system: dict[str, Any]) -> None:
    metrics = analyzer_system["url"] + "/metrics"
    before = scrape(metrics)
    # a group of its own: analysed (one model call) whichever tests ran before in this module
    analyzer_system["celery"].send_task("analyzer_tests.fee_lookup", queue="default")
    row = wait_for(
        lambda: analysis_from(analyzer_system, "celery_task:analyzer_tests.fee_lookup"), 90, "the analysis"
    )
    assert row.status == "ok" and row.input_tokens > 0 and row.output_tokens > 0 and row.cost_usd > 0
    labels = {"provider": row.provider, "model": row.model}

    def grew(name: str, after: Samples, **extra: str) -> float:
        return total(after, name, **labels, **extra) - total(before, name, **labels, **extra)

    # (at least: another group's analysis may finish meanwhile; none of this module's is pending)
    def counted() -> Samples | None:
        found = scrape(metrics)
        return found if grew("hean_llm_calls_total", found, outcome="ok") >= 1 else None

    after = wait_for(counted, 30, "hean_llm_calls_total to count the call")
    assert isinstance(after, dict)
    assert grew("hean_llm_tokens_total", after, direction="input") >= row.input_tokens
    assert grew("hean_llm_tokens_total", after, direction="output") >= row.output_tokens
    assert grew("hean_llm_cost_usd_total", after) >= row.cost_usd - 1e-12


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
    processes[0] = start_analyzer_worker(analyzer_system["env"], analyzer_system["logs"])
    row = wait_for(lambda: analysis_from(analyzer_system, "crash:"), 90, "the crash analysis")
    assert row.exc_type == "FatalError: Segmentation fault" and row.status == "ok"
    assert not crash_file.exists()
