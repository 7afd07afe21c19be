"""The error analyzer: every error becomes a root cause and a proposed (maybe applied) fix.

The original docs' API, with a sync face for Celery tasks and eventlet handlers::

    from hean.core.system.error_analyzer import get_error_analyzer, setup_exception_hook
    setup_exception_hook(auto_dev_mode=False)
    fix = await get_error_analyzer().analyze_error(exception)     # or analyze_error_sync(...)

One pipeline (`analyze_report_sync`): group the error by its fingerprint and the involved
source; a repeat of an analysed group is counted, not sent again; otherwise build the prompt,
redact it whole (fail closed), ask the configured model within the hourly cap (invalid output
is asked once more), store the outcome in the database and in logs/fix_suggestions.log, and in
auto-dev mode hand the suggestion to hean.analyzer.autodev. Nothing the model returns is run.

Errors caught by the hooks are only enqueued where they happen (hean.analyzer.dispatch); by
default they are analysed in this process's background thread, and the workers and the web
process send them to the `llm` queue instead (`set_delivery`, see workers/llm.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hean import metrics
from hean.analyzer.autodev import AutoDev
from hean.analyzer.dispatch import Delivery, QueueDelivery, ReportSender
from hean.analyzer.models import ErrorReport, FixSuggestion
from hean.analyzer.prompt import build_messages
from hean.analyzer.providers import (
    DEFAULT_MODELS,
    AnthropicProvider,
    InvalidOutput,
    OpenAIProvider,
    Provider,
    ProviderError,
    Usage,
    estimate_cost,
)
from hean.analyzer.redaction import MASK, RedactionError, Redactor
from hean.analyzer.report import PROJECT_ROOT, recent_logs, report_from_exception
from hean.config import Settings, get_settings
from hean.process_wide import ProcessWide

if TYPE_CHECKING:  # imported where used: SQLAlchemy is no start-up cost of every worker
    from hean.analyzer.history import AnalysisHistory
    from hean.db import Database

log = logging.getLogger("hean.analyzer")

#: How many times one analysis asks the model (the second only after invalid output).
MAX_ASKS = 2


@dataclass
class ErrorAnalysis:
    """One analysis as stored: `suggestion` is the fix when `status` is "ok"."""

    id: int
    status: str
    fingerprint: str
    count: int
    deduplicated: bool
    exc_type: str
    origin: str
    suggestion: FixSuggestion | None
    error: str | None
    autodev: dict[str, Any] | None
    input_tokens: int
    output_tokens: int
    cost_usd: float

    @classmethod
    def from_row(cls, row: dict[str, Any], deduplicated: bool = False) -> ErrorAnalysis:
        return cls(
            id=row["id"],
            status=row["status"],
            fingerprint=row["fingerprint"],
            count=row["count"],
            deduplicated=deduplicated,
            exc_type=row["exc_type"],
            origin=row["origin"],
            suggestion=FixSuggestion.model_validate(row["suggestion"]) if row["suggestion"] else None,
            error=row["error"],
            autodev=row["autodev"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cost_usd=row["cost_usd"],
        )


def make_provider(settings: Settings) -> Provider | None:
    """The configured provider, or None when it has neither a key nor a base URL."""
    if settings.llm_provider == "anthropic":
        key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
        if not key and not os.environ.get("ANTHROPIC_BASE_URL"):
            return None
        return AnthropicProvider(
            settings.llm_model or DEFAULT_MODELS["anthropic"],
            key,
            timeout=settings.llm_timeout,
            max_retries=settings.llm_max_retries,
            max_tokens=settings.llm_max_tokens,
        )
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    if not key and not os.environ.get("OPENAI_BASE_URL"):
        return None
    return OpenAIProvider(
        settings.llm_model or DEFAULT_MODELS["openai"],
        key,
        api=settings.llm_openai_api,
        timeout=settings.llm_timeout,
        max_retries=settings.llm_max_retries,
        max_tokens=settings.llm_max_tokens,
    )


def configured_secrets(settings: Settings) -> list[str]:
    """Secret values HEAN itself knows: API keys and the control token."""
    values = [s.get_secret_value() for s in (settings.openai_api_key, settings.anthropic_api_key) if s]
    token = settings.read_token()
    if token:
        values.append(token)
    return values


class ErrorAnalyzer:
    """Analyses errors into fix suggestions; handed its settings, database, provider and redactor."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        database: Database | None = None,
        provider: Provider | None = None,
        redactor: Redactor | None = None,
        auto_dev_mode: bool | None = None,
        project_root: Path | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.auto_dev_mode = self.settings.auto_dev_mode if auto_dev_mode is None else auto_dev_mode
        self.project_root = (project_root or self.settings.autodev_root or PROJECT_ROOT).resolve()
        self._database = database
        self._history: AnalysisHistory | None = None
        self._provider = provider
        self._provider_made = provider is not None
        self.redactor = redactor or Redactor(configured_secrets(self.settings))
        self.sender = ReportSender(self.build_report, self.analyze_report_sync)
        self._lock = threading.Lock()
        self._group_locks: dict[str, threading.Lock] = {}

    # -- parts, made on first use ----------------------------------------------------------------
    @property
    def history(self) -> AnalysisHistory:
        with self._lock:
            if self._history is None:
                from hean.analyzer.history import AnalysisHistory

                if self._database is None:
                    from hean.db import database

                    self._database = database()
                self._history = AnalysisHistory(
                    self._database, self.settings.logs_dir / "fix_suggestions.log"
                )
            return self._history

    @property
    def provider(self) -> Provider | None:
        with self._lock:
            if not self._provider_made:
                self._provider = make_provider(self.settings)
                self._provider_made = True
            return self._provider

    def autodev(self) -> AutoDev:
        return AutoDev(
            self.project_root,
            self.settings.home / "autodev",
            allow=self.settings.autodev_allow_list,
            min_confidence=self.settings.autodev_min_confidence,
            test_command=self.settings.autodev_test_command,
            test_timeout=self.settings.autodev_test_timeout,
            redactor=self.redactor,
            log_path=self.settings.logs_dir / "autodev.log",
        )

    def close(self) -> None:
        """Close the provider's connections (a new provider is made on next use)."""
        with self._lock:
            if self._provider is not None:
                self._provider.close()
            self._provider, self._provider_made = None, False

    def set_delivery(self, deliver: Delivery) -> None:
        """Where reports from `report()` go (default: analysed here, in the background thread)."""
        self.sender.deliver = deliver

    # -- reports ---------------------------------------------------------------------------------
    def build_report(
        self, exc: BaseException, origin: str, log_lines: list[str] | None = None
    ) -> ErrorReport:
        """A redacted report of `exc` (raises RedactionError: then nothing is reported)."""
        report = report_from_exception(exc, origin, log_lines, self.project_root)
        return self.redact_report(report)

    def redact_report(self, report: ErrorReport) -> ErrorReport:
        data = report.model_dump(mode="json")
        keep = {name: data.pop(name) for name in ("fingerprint", "source_hash", "occurred_at")}
        clean = self.redactor.redact_json(data)
        assert isinstance(clean, dict)
        return ErrorReport.model_validate({**clean, **keep})

    def report(self, exc: BaseException, origin: str) -> bool:
        """Fire and forget: queue `exc` for analysis off this thread; False when dropped."""
        try:
            return self.sender.submit(exc, origin, recent_logs().recent())
        except Exception:  # reporting never raises into the code that failed
            return False

    # -- analysis --------------------------------------------------------------------------------
    def analyze_error_sync(self, exc: BaseException, origin: str = "direct") -> ErrorAnalysis:
        """Analyse `exc` now, in this thread (the sync face)."""
        return self.analyze_report_sync(self.build_report(exc, origin, recent_logs().recent()))

    async def analyze_error(self, exc: BaseException, origin: str = "direct") -> ErrorAnalysis:
        """Analyse `exc` (the async face of the original docs): the pipeline runs in a thread."""
        return await asyncio.to_thread(self.analyze_error_sync, exc, origin)

    def _group_lock(self, fingerprint: str) -> threading.Lock:
        with self._lock:
            return self._group_locks.setdefault(fingerprint, threading.Lock())

    def analyze_report_sync(self, report: ErrorReport) -> ErrorAnalysis:
        """The pipeline for one report (see the module docstring); never raises for the model's faults."""
        with self._group_lock(report.fingerprint):
            return self._analyze(report)

    def _safe(self, text: str) -> str:
        try:
            return self.redactor.redact(text)
        except RedactionError:
            return MASK

    def _analyze(self, report: ErrorReport) -> ErrorAnalysis:
        history = self.history
        report = report.model_copy(
            update={"message": self._safe(report.message), "origin": self._safe(report.origin)}
        )
        row, _ = history.open_group(report, status="pending")
        count = history.count_occurrence(row["id"], report.occurred_at)
        if row["status"] == "ok":
            log.info("event=analysis_repeat id=%s count=%d", row["id"], count)
            return ErrorAnalysis.from_row({**row, "count": count}, deduplicated=True)

        provider = self.provider
        if provider is None:
            return self._finish(
                row["id"],
                report,
                status="not_configured",
                error=(f"LLM_PROVIDER={self.settings.llm_provider} has no API key or base URL"),
            )
        try:
            system, user = build_messages(report, self.redactor)
        except RedactionError as exc:
            return self._finish(row["id"], report, status="failed", error=f"not sent: {exc}")

        usage = Usage()
        cost = 0.0
        suggestion: FixSuggestion | None = None
        error = ""
        for _ in range(MAX_ASKS):
            call_id = history.reserve_call(
                self.settings.llm_calls_per_hour, provider.name, provider.model, row["id"]
            )
            if call_id is None:
                return self._finish(
                    row["id"],
                    report,
                    status="capped",
                    usage=usage,
                    cost=cost,
                    provider=provider,
                    error=f"hourly cap of {self.settings.llm_calls_per_hour} model calls reached",
                )
            outcome, call_usage = "ok", Usage()
            try:
                suggestion, call_usage = provider.suggest(system, user)
            except InvalidOutput as exc:
                outcome, call_usage, error = "invalid_output", exc.usage, f"invalid model output: {exc}"
            except ProviderError as exc:
                outcome, error = exc.kind, f"provider error: {exc}"
            call_cost = estimate_cost(
                provider.model,
                call_usage.input_tokens,
                call_usage.output_tokens,
                self.settings.llm_price_pair,
            )
            history.finish_call(
                call_id, outcome, call_usage.input_tokens, call_usage.output_tokens, call_cost
            )
            metrics.llm_call(
                provider.name,
                provider.model,
                outcome,
                call_usage.input_tokens,
                call_usage.output_tokens,
                call_cost,
            )
            usage = Usage(
                usage.input_tokens + call_usage.input_tokens, usage.output_tokens + call_usage.output_tokens
            )
            cost += call_cost
            if outcome != "invalid_output":
                break  # a success, or an error the SDK already retried
        if suggestion is None:
            return self._finish(
                row["id"], report, status="failed", error=error, usage=usage, cost=cost, provider=provider
            )
        analysis = self._finish(
            row["id"], report, status="ok", usage=usage, cost=cost, provider=provider, suggestion=suggestion
        )
        if self.auto_dev_mode:
            attempt = self.autodev().attempt(suggestion, analysis.id)
            history.update(analysis.id, autodev=attempt.to_dict())
            history.append_log({"event": "autodev_attempt", "analysis_id": analysis.id, **attempt.to_dict()})
            analysis.autodev = attempt.to_dict()
        return analysis

    def _finish(
        self,
        analysis_id: int,
        report: ErrorReport,
        *,
        status: str,
        error: str | None = None,
        usage: Usage | None = None,
        cost: float = 0.0,
        provider: Provider | None = None,
        suggestion: FixSuggestion | None = None,
    ) -> ErrorAnalysis:
        usage = usage or Usage()
        row = self.history.update(
            analysis_id,
            status=status,
            error=error or None,  # the analyzer's own words, never the model's or the error's
            provider=provider.name if provider else None,
            model=provider.model if provider else None,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost,
            suggestion=suggestion.model_dump(mode="json") if suggestion else None,
        )
        self.history.append_log(
            {
                "event": "analysis",
                "id": analysis_id,
                "status": status,
                "error": row["error"],
                "fingerprint": report.fingerprint,
                "origin": report.origin,
                "exc_type": report.exc_type,
                "message": row["message"],
                "count": row["count"],
                "provider": row["provider"],
                "model": row["model"],
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cost_usd": cost,
                "suggestion": row["suggestion"],
                "at": row["last_seen"],
            }
        )
        log.info("event=analysis id=%s status=%s exc_type=%s", analysis_id, status, report.exc_type)
        return ErrorAnalysis.from_row(row)


_analyzer = ProcessWide(ErrorAnalyzer)
_delivery_lock = threading.Lock()


def get_error_analyzer() -> ErrorAnalyzer:
    """The process-wide analyzer (built from the settings on first use)."""
    return _analyzer.get()


def reporting_analyzer(celery_app: Any) -> ErrorAnalyzer:
    """The process-wide analyzer, its reports sent to the `llm` queue through `celery_app`."""
    analyzer = get_error_analyzer()
    with _delivery_lock:
        current = analyzer.sender.deliver
        if not (isinstance(current, QueueDelivery) and current.celery_app is celery_app):
            analyzer.set_delivery(QueueDelivery(celery_app))
    return analyzer


def set_error_analyzer(analyzer: ErrorAnalyzer | None) -> None:
    """Replace (or forget, with None) the process-wide analyzer."""
    _analyzer.set(analyzer)


#: How long an uncaught exception in the main thread waits for its report before the process exits.
EXIT_FLUSH_S = 120.0


def setup_exception_hook(auto_dev_mode: bool = False) -> ErrorAnalyzer:
    """Report uncaught exceptions (main thread and threads), then call the hooks that were there.

    Idempotent: a second call only updates `auto_dev_mode`.
    """
    analyzer = get_error_analyzer()
    analyzer.auto_dev_mode = auto_dev_mode
    recent_logs()  # capture log lines from now on, for the prompts' context
    if getattr(sys.excepthook, "_hean_hook", False):
        return analyzer
    previous = sys.excepthook
    previous_thread = threading.excepthook

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        try:
            if isinstance(exc, Exception):
                target = get_error_analyzer()
                if target.report(exc, "excepthook"):
                    # the process is about to exit: give the report its chance to be handled
                    target.sender.flush(min(EXIT_FLUSH_S, target.settings.llm_timeout * 2 + 10))
        finally:
            previous(exc_type, exc, tb)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        try:
            if isinstance(args.exc_value, Exception):
                name = args.thread.name if args.thread is not None else "?"
                get_error_analyzer().report(args.exc_value, f"thread:{name}")
        finally:
            previous_thread(args)

    excepthook._hean_hook = True  # type: ignore[attr-defined]  # marks the hook as installed
    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    return analyzer
