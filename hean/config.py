"""One Settings object for every HEAN process, read from the environment once."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    ByteSize,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from hean.affinity import DEFAULT_NICE, Niceness

#: Default Redis used when neither REDIS_URL nor a private server started by `hean up` exists.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: The database URL schemes HEAN runs on (hean/db.py; `postgresql` and `postgres` use psycopg).
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg")
#: The shortest history retention (HEAN_HISTORY_KEEP_DAYS) accepted, in seconds; it must also be
#: longer than HEAN_DEDUP_WINDOW_S (hean/retention.py says why).
MIN_HISTORY_KEEP_S = 3600.0


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _scheme(url: str) -> str:
    """The scheme of `url` ("" without one)."""
    return url.partition("://")[0] if "://" in url else ""


def _scheme_of(url: str) -> str:
    """What a refused URL is, in words, without the URL itself: it may hold a password."""
    scheme = _scheme(url)
    return f"a URL with scheme {scheme!r}" if scheme else "a URL with no scheme"


class Settings(BaseSettings):
    """Environment-driven configuration; see the README's table for every variable."""

    # No populate_by_name: field names like `home` or `port` must never read HOME or PORT.
    # a refused value is not repeated in the error: URLs, keys and tokens are secrets
    model_config = SettingsConfigDict(extra="ignore", hide_input_in_errors=True)

    home: Path = Field(
        default=Path(".hean"),
        validation_alias=_env("HEAN_HOME"),
        description="Directory for the token, private Redis data, logs and the default database.",
    )
    host: str = Field(default="127.0.0.1", validation_alias=_env("HEAN_HOST"))
    port: int = Field(default=8000, ge=1, le=65535, validation_alias=_env("HEAN_PORT"))
    api_token: SecretStr | None = Field(default=None, validation_alias=_env("HEAN_API_TOKEN"))
    # repr=False: a Redis URL may carry a password (the private server's always does)
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL"), repr=False)
    flower_port: int = Field(default=5555, ge=1, le=65535, validation_alias=_env("HEAN_FLOWER_PORT"))
    database_url: str | None = Field(default=None, validation_alias=_env("DATABASE_URL"))
    socketio_channel: str = Field(
        default="hean-socketio",
        min_length=1,
        validation_alias=_env("HEAN_SOCKETIO_CHANNEL"),
        description="Redis pub/sub channel shared by the web process and the workers' emitter.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", validation_alias=_env("HEAN_LOG_LEVEL")
    )
    ack_fsync: Literal["auto", "on", "off"] = Field(
        default="auto",
        validation_alias=_env("HEAN_ACK_FSYNC"),
        description="Acks wait for Redis to fsync the command (WAITAOF): auto = when it keeps an AOF.",
    )
    redis_appendfsync: Literal["always", "everysec"] = Field(
        default="always",
        validation_alias=_env("HEAN_REDIS_APPENDFSYNC"),
        description="The private Redis's appendfsync: always (every write on disk before its reply, "
        "so an ack survives a power loss) or everysec (faster; a crash of the machine can lose the "
        "last second, acked commands included).",
    )
    redis_maxmemory: str = Field(
        default="50%",
        validation_alias=_env("HEAN_REDIS_MAXMEMORY"),
        description="The private Redis's memory limit (maxmemory, noeviction: full, it refuses new "
        "commands rather than be killed): a share of the machine's memory ('50%'), a size ('4GB', "
        "'512MiB', bytes), or 0 for none.",
    )
    disk_min_free_mb: int = Field(
        default=1024,
        ge=0,
        validation_alias=_env("HEAN_DISK_MIN_FREE_MB"),
        description="The redis and db health modules are UNHEALTHY while the disk under the private "
        "Redis's data or the SQLite database has less free space than this (0: never).",
    )
    drop_written_pages: bool = Field(
        default=True,
        validation_alias=_env("HEAN_DROP_WRITTEN_PAGES"),
        description="Drop the private Redis's AOF and the SQLite history database from the page "
        "cache once written (nothing reads them back; hean.page_cache says why).",
    )
    ack_replicas: int = Field(
        default=0,
        ge=0,
        validation_alias=_env("HEAN_ACK_REPLICAS"),
        description="Replicas that must have the command in their AOF before it is acked (WAITAOF).",
    )
    intake_linger_ms: float = Field(
        default=1.0,
        ge=0,
        le=20,
        validation_alias=_env("HEAN_INTAKE_LINGER_MS"),
        description="Group commit: while commands arrive back to back, the web process's writer waits "
        "this long before reserving and enqueueing a batch, so that they share one round trip and "
        "one fsync wait (0: never wait).",
    )
    engine_linger_ms: float = Field(
        default=4.0,
        ge=0,
        le=50,
        validation_alias=_env("HEAN_ENGINE_LINGER_MS"),
        description="Group commit: while commands arrive back to back, the engine worker waits this "
        "long before taking the queue, so that they share one commit (0: never wait). Batches a "
        "commit takes along while more keep queuing do not wait.",
    )
    snapshot_interval_s: float = Field(
        default=5.0,
        ge=0.1,
        le=3600,
        validation_alias=_env("HEAN_SNAPSHOT_INTERVAL_S"),
        description="The engine worker snapshots its engine at most this often while orders flow "
        "(and after every control command); a restart replays the log written since.",
    )
    dedup_window_s: int = Field(
        default=600,
        ge=1,
        validation_alias=_env("HEAN_DEDUP_WINDOW_S"),
        description="Seconds a request id stays in Redis after its result reached the database.",
    )
    history_keep_days: float = Field(
        default=0.0,
        ge=0,
        validation_alias=_env("HEAN_HISTORY_KEEP_DAYS"),
        description="Days the history database keeps orders, fills and answered commands; 0 keeps "
        "everything. Also how long a resent request id is answered with its first result.",
    )
    visibility_timeout: int = Field(default=3600, ge=10, validation_alias=_env("HEAN_VISIBILITY_TIMEOUT"))
    result_expires: int = Field(default=3600, ge=10, validation_alias=_env("HEAN_RESULT_EXPIRES"))
    cors_origins: str = Field(
        default="",
        validation_alias=_env("HEAN_CORS_ORIGINS"),
        description="Comma-separated origins allowed to call the API from a browser; none by default.",
    )
    command_rate: float = Field(
        default=2000.0,
        gt=0,
        validation_alias=_env("HEAN_COMMAND_RATE"),
        description="Commands per second one connection may send (token bucket refill rate).",
    )
    command_burst: int = Field(
        default=2000,
        ge=1,
        validation_alias=_env("HEAN_COMMAND_BURST"),
        description="Token bucket size: commands one connection may send at once.",
    )
    command_modules: str = Field(
        default="",
        validation_alias=_env("HEAN_COMMAND_MODULES"),
        description="Comma-separated modules that register project commands (imported by web and workers).",
    )
    cpu_affinity: str = Field(
        default="",
        description="Pin processes to CPUs, e.g. 'redis=0;web=0;*=1' (see hean/affinity.py)",
        validation_alias=_env("HEAN_CPU_AFFINITY"),
    )
    process_nice: str = Field(
        default=DEFAULT_NICE,
        description="Scheduling priority per process, e.g. 'beat=-10;worker-pulse=-10' (hean/affinity.py)",
        validation_alias=_env("HEAN_NICE"),
    )
    exchange: Literal["paper", "bybit"] = Field(default="paper", validation_alias=_env("HEAN_EXCHANGE"))
    bybit_endpoint: str | None = Field(
        default=None,
        validation_alias=_env("HEAN_BYBIT_ENDPOINT"),
        description="Base URL of Bybit's REST API, to override pybit's (e.g. a local test server).",
    )
    bybit_testnet: bool = Field(default=False, validation_alias=_env("HEAN_BYBIT_TESTNET"))
    auto_dev_mode: bool = Field(default=False, validation_alias=_env("AUTO_DEV_MODE"))
    llm_provider: Literal["openai", "anthropic"] = Field(
        default="openai", validation_alias=_env("LLM_PROVIDER")
    )
    llm_model: str | None = Field(default=None, validation_alias=_env("LLM_MODEL"))
    openai_api_key: SecretStr | None = Field(default=None, validation_alias=_env("OPENAI_API_KEY"))
    anthropic_api_key: SecretStr | None = Field(default=None, validation_alias=_env("ANTHROPIC_API_KEY"))
    llm_openai_api: Literal["chat", "responses"] = Field(
        default="chat",
        validation_alias=_env("HEAN_LLM_OPENAI_API"),
        description="OpenAI API for analyses: Chat Completions (any compatible server) or Responses.",
    )
    llm_timeout: float = Field(default=60.0, gt=0, le=600, validation_alias=_env("HEAN_LLM_TIMEOUT"))
    llm_max_retries: int = Field(default=2, ge=0, le=10, validation_alias=_env("HEAN_LLM_MAX_RETRIES"))
    llm_max_tokens: int = Field(default=2000, ge=64, le=64_000, validation_alias=_env("HEAN_LLM_MAX_TOKENS"))
    llm_calls_per_hour: int = Field(
        default=30,
        ge=0,
        validation_alias=_env("HEAN_LLM_CALLS_PER_HOUR"),
        description="Cap on model calls per rolling hour, across every analyzer sharing the database.",
    )
    llm_price: str = Field(
        default="",
        validation_alias=_env("HEAN_LLM_PRICE"),
        description="USD per million input,output tokens for the cost estimate (empty: built-in table).",
    )
    autodev_min_confidence: float = Field(
        default=0.8, ge=0.0, le=1.0, validation_alias=_env("HEAN_AUTODEV_MIN_CONFIDENCE")
    )
    autodev_allow: str = Field(
        default="hean/,web/,workers/",
        validation_alias=_env("HEAN_AUTODEV_ALLOW"),
        description="Comma-separated project-relative prefixes auto-dev may patch (the deny-list wins).",
    )
    autodev_test_command: str = Field(
        default="python -m pytest -x -q", min_length=1, validation_alias=_env("HEAN_AUTODEV_TEST_COMMAND")
    )
    autodev_test_timeout: float = Field(
        default=1800.0, gt=0, validation_alias=_env("HEAN_AUTODEV_TEST_TIMEOUT")
    )
    autodev_root: Path | None = Field(
        default=None,
        validation_alias=_env("HEAN_AUTODEV_ROOT"),
        description="Project tree auto-dev patches (default: the tree this package is in).",
    )

    @field_validator("redis_maxmemory")
    @classmethod
    def _maxmemory(cls, value: str) -> str:
        memory_limit(value, 1 << 60)  # its form (a share's size is known where Redis starts)
        return value.strip()

    @field_validator("llm_price")
    @classmethod
    def _price_pair(cls, value: str) -> str:
        if value.strip():
            parts = value.split(",")
            try:
                prices = [float(part) for part in parts]
            except ValueError:
                prices = []
            # pydantic's error names the variable already
            if len(prices) != 2 or not all(0 <= price < float("inf") for price in prices):
                raise ValueError("must be 'input,output': USD per million tokens of each, such as '0.15,0.6'")
        return value.strip()

    @model_validator(mode="after")
    def _history_keep(self) -> Settings:
        if self.history_keep_days:
            problem = history_keep_problem(self.history_keep_days * 86400.0, self.dedup_window_s)
            if problem:
                raise ValueError(f"HEAN_HISTORY_KEEP_DAYS: {problem}")
        return self

    @property
    def history_keep_s(self) -> float | None:
        """The history's retention in seconds, None when it keeps everything."""
        return self.history_keep_days * 86400.0 or None

    @property
    def llm_price_pair(self) -> tuple[float, float] | None:
        if not self.llm_price:
            return None
        first, second = self.llm_price.split(",")
        return float(first), float(second)

    @property
    def autodev_allow_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.autodev_allow.split(",") if p.strip())

    @property
    def logs_dir(self) -> Path:
        """Where the analyzer's logs go: fix_suggestions.log and autodev.log."""
        return self.home / "logs"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        # Flask-SocketIO hands any other scheme to kombu, which has no valkey:// transport.
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError(f"must start with redis:// or rediss://; got {_scheme_of(value)}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if _scheme(value) not in DATABASE_SCHEMES:
            raise ValueError(
                f"must be sqlite:///<file> or postgresql://user:password@host/db "
                f"(schemes: {', '.join(DATABASE_SCHEMES)}); got {_scheme_of(value)}"
            )
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def command_module_list(self) -> list[str]:
        return [m.strip() for m in self.command_modules.split(",") if m.strip()]

    @property
    def cpu_table(self) -> dict[str, frozenset[int]]:
        """HEAN_CPU_AFFINITY parsed; raises hean.affinity.AffinityError when it is wrong."""
        from hean.affinity import parse_affinity

        return parse_affinity(self.cpu_affinity)

    @property
    def nice_table(self) -> dict[str, Niceness]:
        """HEAN_NICE parsed; raises hean.affinity.AffinityError when it is wrong."""
        from hean.affinity import parse_nice

        return parse_nice(self.process_nice)

    @property
    def redis_url_file(self) -> Path:
        """Where `hean up` records the URL of the private Redis it started, password included
        (mode 0600), for every process and the standard Celery CLIs to find."""
        return self.home / "redis.url"

    @property
    def redis_password_file(self) -> Path:
        """The password the private Redis requires (generated once, mode 0600)."""
        return self.home / "redis.password"

    @property
    def token_file(self) -> Path:
        return self.home / "token"

    def effective_redis_url(self) -> str:
        """REDIS_URL if set, else the private server `hean up` recorded, else the default."""
        if self.redis_url:
            return self.redis_url
        try:
            recorded = self.redis_url_file.read_text().strip()
        except OSError:
            recorded = ""
        return recorded or DEFAULT_REDIS_URL

    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'hean.db').resolve()}"

    def read_token(self) -> str | None:
        """The control token: HEAN_API_TOKEN, else the one `hean up` stored in .hean/token."""
        if self.api_token is not None:
            return self.api_token.get_secret_value()
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None


#: The least memory limit accepted for the private Redis: below it an idle `hean up` is full.
MIN_REDIS_MAXMEMORY = 32 * 1024 * 1024
_SHARE = re.compile(r"(\d+(?:\.\d+)?)\s*%")


def memory_limit(spec: str, machine_bytes: int) -> int:
    """HEAN_REDIS_MAXMEMORY in bytes on a machine with `machine_bytes` of memory (0: none):
    "50%" is a share of it, "4GB" / "512MiB" / "1073741824" a size (pydantic's ByteSize: KB
    is 1,000 bytes, KiB 1,024). A ValueError says what is wrong without the variable's name,
    which pydantic's error and `ensure_redis` give."""
    text = spec.strip()
    share = _SHARE.fullmatch(text)
    if share:
        percent = float(share.group(1))
        if not 0 < percent <= 100:
            raise ValueError(f"a share of the machine's memory is above 0% and at most 100%, not {text!r}")
        limit = int(machine_bytes * percent / 100)
    else:
        try:
            limit = int(TypeAdapter(ByteSize).validate_python(text))
        except ValidationError:
            raise ValueError(
                f"{text!r} is neither a share of the machine's memory ('50%'), "
                "a size ('4GB', '512MiB', bytes) nor 0 (no limit)"
            ) from None
        if limit == 0:
            return 0
    if limit < MIN_REDIS_MAXMEMORY:
        raise ValueError(
            f"{text!r} is {limit:,} bytes, less than the "
            f"{MIN_REDIS_MAXMEMORY // 2**20} MiB an idle system needs (0: no limit)"
        )
    return limit


def history_keep_problem(keep_s: float, dedup_window_s: int) -> str | None:
    """Why a history retention of `keep_s` seconds cannot be, or None when it can."""
    if keep_s < MIN_HISTORY_KEEP_S:
        shortest = MIN_HISTORY_KEEP_S / 86400
        return f"{keep_s / 86400:g} days is less than the shortest, one hour ({shortest:.4f} days)"
    if keep_s <= dedup_window_s:
        return (
            f"{keep_s / 86400:g} days is not longer than HEAN_DEDUP_WINDOW_S ({dedup_window_s} s): "
            "request ids that left Redis would not be found in the database either"
        )
    return None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, built from the environment on first use."""
    return Settings()


def reload_settings() -> Settings:
    """Forget the cached settings (after the environment changed) and read them again."""
    get_settings.cache_clear()
    return get_settings()


def env_for_children(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment for a child process: ours plus the resolved values it must share."""
    env = dict(os.environ)
    env["REDIS_URL"] = settings.effective_redis_url()
    env["HEAN_HOME"] = str(settings.home.resolve())
    env.update(overrides)
    return env
