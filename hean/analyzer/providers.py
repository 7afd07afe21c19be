"""Model providers over the official SDKs: OpenAI (Chat Completions or Responses) and Anthropic.

Both SDKs read their own base-URL variables (OPENAI_BASE_URL with /v1, ANTHROPIC_BASE_URL
without), so any OpenAI-compatible local server (llama.cpp, vLLM, Ollama) works offline.
Retries with backoff on timeouts, 429 and 5xx (honouring retry-after) are the SDKs' own
(`max_retries`, `timeout`); what is left after them is a `ProviderError`, never a crash.
Structured output: OpenAI's JSON-schema `response_format` (`chat.completions.parse`, or
`responses.parse`), Anthropic's forced tool call. Output that does not fit the schema is an
`InvalidOutput`: the analyzer asks once more, then records a failed analysis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pydantic

from hean.analyzer.models import FixSuggestion

if TYPE_CHECKING:
    from anthropic.types import ToolParam

#: Estimated USD per million (input, output) tokens, by model-name prefix (longest wins).
#: Unknown models (local servers) cost 0; HEAN_LLM_PRICE overrides.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "o4-mini": (1.10, 4.40),
    "claude-haiku-4": (1.00, 5.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
    "claude-3-5-haiku": (0.80, 4.00),
}

DEFAULT_MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-sonnet-4-5"}
TOOL_NAME = "report_fix"


def estimate_cost(
    model: str, input_tokens: int, output_tokens: int, override: tuple[float, float] | None = None
) -> float:
    """Estimated USD for one call."""
    price = override
    if price is None:
        matches = [p for p in PRICES if model.startswith(p)]
        price = PRICES[max(matches, key=len)] if matches else (0.0, 0.0)
    return round((input_tokens * price[0] + output_tokens * price[1]) / 1_000_000, 8)


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


class ProviderError(Exception):
    """The model could not be reached or refused (after the SDK's own retries): `kind` says why."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class InvalidOutput(Exception):
    """The model answered, but not with a valid FixSuggestion."""

    def __init__(self, detail: str, usage: Usage) -> None:
        super().__init__(detail)
        self.usage = usage


class Provider(Protocol):
    name: str
    model: str

    def suggest(self, system: str, user: str) -> tuple[FixSuggestion, Usage]:
        """One request; raises ProviderError or InvalidOutput."""
        ...

    def close(self) -> None:
        """Close the SDK client's connections."""
        ...


def _classify(exc: Exception, sdk: Any) -> ProviderError:
    """Map an SDK exception (either SDK names them alike) to a ProviderError kind."""
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderError("timeout", "no answer within the timeout")
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderError("connection", "cannot reach the model's server")
    if isinstance(exc, sdk.RateLimitError):
        return ProviderError("rate_limited", "HTTP 429 after retries")
    if isinstance(exc, sdk.AuthenticationError | sdk.PermissionDeniedError):
        return ProviderError("unauthorized", f"HTTP {exc.status_code}")
    if isinstance(exc, sdk.APIStatusError):
        kind = "server_error" if exc.status_code >= 500 else "bad_request"
        return ProviderError(kind, f"HTTP {exc.status_code}")
    if isinstance(exc, sdk.APIResponseValidationError):
        return ProviderError("bad_response", "the server's answer is not the API's shape")
    return ProviderError("error", type(exc).__name__)


class OpenAIProvider:
    """OpenAI or any server speaking its API; `api` is "chat" (default) or "responses"."""

    name = "openai"

    def __init__(
        self,
        model: str,
        api_key: str | None,
        *,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_tokens: int = 2000,
        api: str = "chat",
    ) -> None:
        import openai

        self._sdk = openai
        self.model = model
        self.api = api
        self.max_tokens = max_tokens
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        # a local server needs no key, but the SDK insists on one
        self.client = openai.OpenAI(
            api_key=api_key or ("no-key" if base_url else None),
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    def close(self) -> None:
        self.client.close()

    def suggest(self, system: str, user: str) -> tuple[FixSuggestion, Usage]:
        sdk = self._sdk
        try:
            if self.api == "responses":
                response = self.client.responses.parse(
                    model=self.model,
                    instructions=system,
                    input=user,
                    text_format=FixSuggestion,
                    max_output_tokens=self.max_tokens,
                )
                usage = Usage(
                    getattr(response.usage, "input_tokens", 0) or 0,
                    getattr(response.usage, "output_tokens", 0) or 0,
                )
                parsed = response.output_parsed
            else:
                completion = self.client.chat.completions.parse(
                    model=self.model,
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                    response_format=FixSuggestion,
                    max_tokens=self.max_tokens,
                )
                usage = Usage(
                    getattr(completion.usage, "prompt_tokens", 0) or 0,
                    getattr(completion.usage, "completion_tokens", 0) or 0,
                )
                parsed = completion.choices[0].message.parsed if completion.choices else None
        except (pydantic.ValidationError, ValueError, sdk.LengthFinishReasonError) as exc:
            raise InvalidOutput(f"not a FixSuggestion: {type(exc).__name__}", Usage()) from None
        except sdk.OpenAIError as exc:
            raise _classify(exc, sdk) from None
        except Exception as exc:  # e.g. a 200 whose body is not JSON: the SDK hands back a str
            raise ProviderError("bad_response", f"unusable answer ({type(exc).__name__})") from None
        if parsed is None:
            raise InvalidOutput("no structured answer (refusal or empty)", usage)
        return parsed, usage


class AnthropicProvider:
    """Anthropic's Messages API; the answer is a forced call of the `report_fix` tool."""

    name = "anthropic"

    def __init__(
        self,
        model: str,
        api_key: str | None,
        *,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_tokens: int = 2000,
    ) -> None:
        import anthropic

        self._sdk = anthropic
        self.model = model
        self.max_tokens = max_tokens
        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.client = anthropic.Anthropic(
            api_key=api_key or ("no-key" if base_url else None),
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )
        self.tool: ToolParam = {
            "name": TOOL_NAME,
            "description": "Report the root cause of the error and the proposed fix.",
            "input_schema": FixSuggestion.model_json_schema(),
        }

    def close(self) -> None:
        self.client.close()

    def suggest(self, system: str, user: str) -> tuple[FixSuggestion, Usage]:
        sdk = self._sdk
        try:
            message = self.client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=system,
                messages=[{"role": "user", "content": user}],
                tools=[self.tool],
                tool_choice={"type": "tool", "name": TOOL_NAME},
            )
        except sdk.AnthropicError as exc:
            raise _classify(exc, sdk) from None
        except Exception as exc:  # e.g. a 200 whose body is not JSON
            raise ProviderError("bad_response", f"unusable answer ({type(exc).__name__})") from None
        usage = Usage(
            getattr(getattr(message, "usage", None), "input_tokens", 0) or 0,
            getattr(getattr(message, "usage", None), "output_tokens", 0) or 0,
        )
        for block in getattr(message, "content", None) or []:
            if getattr(block, "type", None) == "tool_use" and getattr(block, "name", None) == TOOL_NAME:
                try:
                    return FixSuggestion.model_validate(block.input), usage
                except pydantic.ValidationError as exc:
                    raise InvalidOutput(
                        f"tool input is not a FixSuggestion ({exc.error_count()} errors)", usage
                    ) from None
        raise InvalidOutput("no report_fix tool call in the answer", usage)
