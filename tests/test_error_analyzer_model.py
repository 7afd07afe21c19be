"""The analyzer against a real model: SmolLM2-135M served by llama.cpp (xllamacpp), offline.

Checks the wiring (OPENAI_BASE_URL, the real OpenAI SDK, JSON-schema structured output through
llama.cpp's grammar, token usage) and the schema of the answer, not the wisdom of a 135M model.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hean.analyzer.models import FixSuggestion
from hean.config import Settings
from hean.core.system.error_analyzer import ErrorAnalyzer
from hean.db import open_database
from hean.redis_server import free_port
from support import ManagedProcess, wait_for


@pytest.fixture(scope="session")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's server on a free loopback port, started once per session."""
    logs = tmp_path_factory.mktemp("llama")
    port = free_port()
    script = Path(__file__).resolve().parent / "llama_server.py"
    server = ManagedProcess(
        "llama-server", [sys.executable, str(script), str(port)], {"PATH": "/usr/bin:/bin"}, logs
    )
    try:
        wait_for(lambda: "listening " in server.log_text() or not server.alive(), 120, "llama.cpp's server")
        assert server.alive(), server.log_text()[-2000:]

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    return json.loads(response.read()).get("status") == "ok"
            except OSError:
                return False

        wait_for(ready, 120, "the model to load")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_a_real_local_model_answers_with_a_schema_valid_fix(
    llama_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", llama_url + "/v1")  # no key: a local server needs none
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = Settings(
        HEAN_HOME=str(tmp_path / "home"),
        LLM_MODEL="smollm2-135m",
        # a 135M model pads JSON with whitespace and may ramble: room for that, and one more ask
        HEAN_LLM_MAX_TOKENS="1000",
        HEAN_LLM_TIMEOUT="240",  # a hang guard for a busy machine, not a speed check
        HEAN_LLM_MAX_RETRIES="0",
    )
    db = open_database(f"sqlite:///{tmp_path / 'hean.db'}")
    analyzer = ErrorAnalyzer(settings, database=db)
    try:
        try:
            {"alice": 5.0}["bob"]
        except KeyError as exc:
            # no log lines: a short prompt that does not depend on what ran before in the session
            analysis = analyzer.analyze_report_sync(analyzer.build_report(exc, "direct", []))
    finally:
        analyzer.close()
        db.dispose()
    assert analysis.status == "ok", analysis.error
    assert isinstance(analysis.suggestion, FixSuggestion)
    assert 0.0 <= analysis.suggestion.confidence <= 1.0 and analysis.suggestion.risk in (
        "low",
        "medium",
        "high",
    )
    assert len(analysis.suggestion.affected_files) <= 10
    assert analysis.input_tokens > 100 and analysis.output_tokens > 0  # llama.cpp's usage, recorded
    assert analysis.cost_usd == 0.0  # a local model costs nothing
