"""How failures become error values with stable codes (the `code` of `command_result.error`)."""

from __future__ import annotations

from pydantic import ValidationError

from hean.messages import CommandError, ErrorInfo

#: The code of an order the core rejected, by reject reason; any other reason is `order_rejected`.
REJECT_CODES = {
    "ENGINE_HALTED": "engine_halted",
    "ENGINE_STOPPED": "engine_stopped",
    "THROTTLED": "rate_limited",
}


def reject_code(reason: str) -> str:
    """The error code of an order rejected for `reason` (a hean.engine.RejectReason)."""
    return REJECT_CODES.get(str(reason), "order_rejected")


def validation_error(exc: ValidationError, code: str, prefix: str = "") -> ErrorInfo:
    """The first validation error as an ErrorInfo naming the offending field (`prefix` + its path)."""
    first = exc.errors()[0]
    field = (prefix + ".".join(str(part) for part in first["loc"])).rstrip(".")
    # a model's own check (a ValueError in a validator) reads as its text, not "Value error, ..."
    message = first["msg"].removeprefix("Value error, ")
    return ErrorInfo(code=code, message=f"{field or 'payload'}: {message}", field=field or None)


def error_from(exc: Exception) -> ErrorInfo:
    """The error value of an exception a command handler raised."""
    if isinstance(exc, CommandError):
        return ErrorInfo(code=exc.code, message=exc.message, field=exc.field)
    if isinstance(exc, ValidationError):
        return validation_error(exc, "invalid_params")
    return ErrorInfo(code="command_failed", message=f"{type(exc).__name__}: {exc}")
