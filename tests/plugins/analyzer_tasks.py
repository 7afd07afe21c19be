"""Failures on purpose for the analyzer's system test (HEAN_COMMAND_MODULES=analyzer_tasks).

In a worker: Celery tasks that raise (each its own error group), and one that dies of a fatal
signal. In the web
process: the `buggy_params` command, whose params model has a validator that raises something
other than a validation error, as a project's buggy code would: the `command` Socket.IO
handler and the `POST /api/commands` view both fail on it.
"""

from __future__ import annotations

import faulthandler
from typing import Any

from pydantic import BaseModel, field_validator

from hean.commands import command
from hean.topology import DEFAULT_QUEUE
from workers.app import app


def settle(balances: dict[str, float], account: str) -> float:
    return balances[account] / balances["total"]


@app.task(name="analyzer_tests.boom", ignore_result=True)
def boom() -> float:
    return settle({"total": 0.0, "alice": 5.0}, "alice")


FEE_RATES = {"VIP0": 0.001, "VIP1": 0.0008}


def fee_rate(tier: str) -> float:
    return FEE_RATES[tier]


@app.task(name="analyzer_tests.fee_lookup", ignore_result=True)
def fee_lookup() -> float:
    return fee_rate("VIP9")


@app.task(name="analyzer_tests.segfault", ignore_result=True, acks_late=False)
def segfault() -> None:
    faulthandler._sigsegv()


RATES: dict[str, float] = {}


class BuggyParams(BaseModel):
    currency: str

    @field_validator("currency")
    @classmethod
    def _known(cls, value: str) -> str:
        RATES[value]  # a KeyError is not a validation error: it escapes the handler
        return value


@command("buggy_params", params=BuggyParams, queue=DEFAULT_QUEUE, description="Fails in validation (test).")
def buggy_params(params: BuggyParams) -> dict[str, Any]:
    return {"currency": params.currency}


class SettleParams(BaseModel):
    account: str


@command("settle_account", params=SettleParams, queue=DEFAULT_QUEUE, description="Fails in its handler.")
def settle_account(params: SettleParams) -> dict[str, Any]:
    return {"share": settle({"total": 0.0, params.account: 5.0}, params.account)}
