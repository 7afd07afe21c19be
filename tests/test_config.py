"""Settings and Celery configuration: validated, documented defaults, reliability knobs on."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from hean.auth import ensure_redis_password, ensure_token, token_matches, write_secret
from hean.config import DEFAULT_REDIS_URL, Settings, memory_limit
from workers import app


def test_defaults_match_the_shared_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HEAN_HOST", "HEAN_PORT", "HEAN_FLOWER_PORT", "REDIS_URL", "HEAN_HOME"):
        monkeypatch.delenv(name, raising=False)
    # generic variables that merely share a field's name must not leak in
    monkeypatch.setenv("HOME", "/elsewhere")
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("HOST", "0.0.0.0")
    settings = Settings()
    assert (settings.host, settings.port, settings.flower_port) == ("127.0.0.1", 8000, 5555)
    assert settings.home == Path(".hean")
    assert settings.effective_database_url().startswith("sqlite:///")
    assert settings.effective_database_url().endswith(".hean/hean.db")


def test_redis_url_falls_back_to_the_server_hean_up_recorded(tmp_path: Path) -> None:
    settings = Settings(HEAN_HOME=tmp_path, REDIS_URL=None)
    assert settings.effective_redis_url() == DEFAULT_REDIS_URL
    (tmp_path / "redis.url").write_text("redis://127.0.0.1:4242/0\n")
    assert settings.effective_redis_url() == "redis://127.0.0.1:4242/0"
    explicit = Settings(HEAN_HOME=tmp_path, REDIS_URL="redis://example:1/0")
    assert explicit.effective_redis_url() == "redis://example:1/0"


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("REDIS_URL", "valkey://127.0.0.1:6379"),
        ("DATABASE_URL", "mysql://u:p@h/db"),
        ("DATABASE_URL", "postgresql+psycopg2://u:p@h/db"),  # a driver HEAN does not install
        ("DATABASE_URL", "hean.db"),
        ("HEAN_PORT", "0"),
        ("HEAN_PORT", "eighty"),
        ("LLM_PROVIDER", "gpt"),
        ("HEAN_LOG_LEVEL", "loud"),
        ("HEAN_LLM_PRICE", "1,abc"),  # a ValueError from float() before
        ("HEAN_LLM_PRICE", "nan,1"),  # taken before: every analysis would have cost NaN
        ("HEAN_LLM_PRICE", "1,-2"),
    ],
)
def test_invalid_settings_are_rejected_with_the_variable_named(env: str, value: str) -> None:
    with pytest.raises(ValidationError, match=env) as refused:
        Settings(**{env: value})
    # `hean` prints "invalid configuration: <variable>: <the message>": named once
    assert env not in refused.value.errors()[0]["msg"]


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        ("50%", 12 * 2**30),
        (" 12.5 % ", 3 * 2**30),
        ("100%", 24 * 2**30),
        ("4GB", 4_000_000_000),
        ("512MiB", 512 * 2**20),
        ("1073741824", 2**30),
        ("0", 0),
    ],
)
def test_the_private_redis_memory_limit_is_a_share_or_a_size(spec: str, size: int) -> None:
    assert memory_limit(spec, 24 * 2**30) == size
    assert Settings(HEAN_REDIS_MAXMEMORY=spec).redis_maxmemory == spec.strip()


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("lots", "neither a share of the machine's memory ('50%'), a size"),
        ("-1", "neither a share"),
        ("0%", "above 0% and at most 100%"),
        ("150%", "above 0% and at most 100%"),
        ("1MB", "1,000,000 bytes, less than the 32 MiB an idle system needs"),
    ],
)
def test_a_memory_limit_redis_cannot_run_with_is_refused_by_name(spec: str, said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        memory_limit(spec, 24 * 2**30)
    with pytest.raises(ValidationError, match="HEAN_REDIS_MAXMEMORY") as refused:
        Settings(HEAN_REDIS_MAXMEMORY=spec)
    # `hean` prints "invalid configuration: HEAN_REDIS_MAXMEMORY: <the message>": named once
    assert "HEAN_REDIS_MAXMEMORY" not in refused.value.errors()[0]["msg"]
    # a share is judged against the machine it runs on: 1% of 1 GiB is too little
    with pytest.raises(ValueError, match="less than the 32 MiB"):
        memory_limit("1%", 2**30)


@pytest.mark.parametrize(
    ("env", "value", "said"),
    [
        ("REDIS_URL", "valkey://:pw-secret@h:1/0", "got a URL with scheme 'valkey'"),
        ("REDIS_URL", "pw-secret@h:1/0", "got a URL with no scheme"),
        ("DATABASE_URL", "mysql://u:pw-secret@h/db", "got a URL with scheme 'mysql'"),
    ],
)
def test_a_refused_url_is_described_without_its_password(env: str, value: str, said: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**{env: value})
    # what `hean` prints (the message), and the whole error a process that fails to start logs
    assert said in refused.value.errors()[0]["msg"] and "pw-secret" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    ["sqlite:////tmp/h.db", "sqlite+pysqlite:///h.db", "postgresql://u:p@h/db", "postgresql+psycopg://h/db"],
)
def test_the_database_urls_hean_runs_on_are_accepted(url: str) -> None:
    assert Settings(DATABASE_URL=url).effective_database_url() == url


def test_secrets_do_not_show_in_repr() -> None:
    settings = Settings(
        OPENAI_API_KEY="sk-secret-value", HEAN_API_TOKEN="tok-secret", REDIS_URL="redis://:pw-secret@h:1/0"
    )
    for secret in ("sk-secret-value", "tok-secret", "pw-secret"):
        assert secret not in repr(settings) and secret not in str(settings)


def test_generated_token_is_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(HEAN_HOME=tmp_path / "home", HEAN_API_TOKEN=None)
    token = ensure_token(settings)
    assert len(token) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / "home" / "token").st_mode) == 0o600
    assert ensure_token(settings) == token
    assert token_matches(token, token)
    assert not token_matches(token, token[:-1]) and not token_matches(token, None)
    assert not token_matches("", "")


def test_generated_redis_password_is_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(HEAN_HOME=tmp_path / "home")
    password = ensure_redis_password(settings)
    assert len(password) >= 32 and password != ensure_token(settings)
    assert stat.S_IMODE(os.stat(tmp_path / "home" / "redis.password").st_mode) == 0o600
    assert ensure_redis_password(settings) == password


def test_write_secret_makes_an_existing_file_private(tmp_path: Path) -> None:
    path = tmp_path / "redis.url"
    path.write_text("old\n")
    path.chmod(0o644)
    write_secret(path, "redis://:pw@127.0.0.1:1/0\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == "redis://:pw@127.0.0.1:1/0\n"


def test_queues_and_routes_are_declared_in_celeryconfig() -> None:
    assert {q.name for q in app.conf.task_queues} == {"engine", "pulse", "llm", "default"}
    route = app.amqp.router.route
    for task, queue in (
        ("workers.engine.run_batch", "engine"),
        ("workers.pulse.pulse", "pulse"),
        ("workers.default.run_batch", "default"),
    ):
        assert route({}, task)["queue"].name == queue


def test_reliability_knobs_are_on() -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.result_expires > 0
    assert conf.worker_send_task_events and conf.task_send_sent_event


def test_one_visibility_timeout_for_broker_and_results_from_the_environment(repo_root: Path) -> None:
    # a fresh process, so that celeryconfig reads this environment (it is read once per process)
    probe = (
        "from workers import app; c = app.conf; "
        "print(c.broker_transport_options['visibility_timeout'], "
        "c.result_backend_transport_options['visibility_timeout'])"
    )
    env = dict(os.environ, HEAN_VISIBILITY_TIMEOUT="1234")
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=repo_root, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1234", "1234"]


def test_pulse_is_scheduled_every_100_ms_and_expires() -> None:
    entry = app.conf.beat_schedule["pulse"]
    assert entry["schedule"] == 0.1
    assert entry["options"]["expires"] <= 0.2
