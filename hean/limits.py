"""The bounds of every risk limit and order field, exactly as the C++ core checks them.

The core's table (cpp_ext/bounds.hpp, exposed as ``hean._core.bounds()``) is the one source of
truth. ``hean/bounds.json`` is generated from it (``python -m hean.limits --write``) and
committed, so that processes which must not load the core (the web process) validate commands
with the core's own numbers; tests/test_limits.py fails as soon as the file and the binding
disagree, and walks every bound through both the schemas below and the core.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

BOUNDS_FILE = Path(__file__).with_name("bounds.json")
#: One unit of every fixed-point value is 1e-8 (the core's SCALE).
DECIMAL_PLACES = 8
#: Characters allowed in identifiers (client order ids, symbols): ASCII, so bytes == characters.
ID_PATTERN = r"^[A-Za-z0-9._:/-]+$"

Kind = Literal["fixed_point", "integer", "length"]


def plain(value: Decimal) -> Decimal:
    """`value` without trailing zeros or a positive exponent: its str() is what a person writes
    (pydantic puts bounds in its messages as str(): "1000", never "1E+3")."""
    value = value.normalize()
    exponent = value.as_tuple().exponent  # "n", "N" or "F" for NaN and infinities
    return value.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else value


@dataclass(frozen=True)
class Bound:
    """One field's bounds: `min` (exclusive or not) and `max` (inclusive), in the core's units."""

    name: str
    kind: Kind
    min: int
    min_exclusive: bool
    max: int

    def _value(self, raw: int) -> Decimal | int:
        return plain(Decimal(raw).scaleb(-DECIMAL_PLACES)) if self.kind == "fixed_point" else raw

    @property
    def low(self) -> Decimal | int:
        """The lower bound in the field's own units (a Decimal for fixed-point values)."""
        return self._value(self.min)

    @property
    def high(self) -> Decimal | int:
        return self._value(self.max)

    def constraints(self) -> Any:
        """pydantic constraints for a field with these bounds: ``Annotated[Decimal, b.constraints()]``
        (fixed point), ``Annotated[int, ...]`` (integer), ``Annotated[str, ...]`` (length)."""
        lower: dict[str, Any] = {"gt" if self.min_exclusive else "ge": self.low}
        if self.kind == "fixed_point":
            return Field(**lower, le=self.high, decimal_places=DECIMAL_PLACES, allow_inf_nan=False)
        if self.kind == "integer":
            return Field(**lower, le=self.high)
        return Field(min_length=int(self.low), max_length=int(self.high), pattern=ID_PATTERN)


def load_bounds(path: Path = BOUNDS_FILE) -> dict[str, Bound]:
    raw: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return {name: Bound(name=name, **fields) for name, fields in raw.items()}


BOUNDS: dict[str, Bound] = load_bounds()
#: Risk limit names, in the core's order.
RISK_LIMIT_NAMES = (
    "min_notional",
    "max_notional",
    "max_open_orders",
    "max_open_positions",
    "max_leverage",
    "max_trade_risk_pct",
    "stop_distance_pct",
    "max_daily_drawdown_pct",
    "kill_switch_drawdown_pct",
    "max_orders_per_second",
    "fee_rate",
)


def limit(name: str) -> Any:
    """The pydantic constraints of the core's field `name`: ``Annotated[Decimal, limit("price")]``."""
    return BOUNDS[name].constraints()


def core_bounds_text() -> str:
    """bounds.json as the binding gives it today (this imports the compiled core)."""
    from hean import _core

    return json.dumps(_core.bounds(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {BOUNDS_FILE.name} from the core")
    args = parser.parse_args(argv)
    text = core_bounds_text()
    if args.write:
        BOUNDS_FILE.write_text(text)
        print(f"wrote {BOUNDS_FILE}")
        return 0
    current = BOUNDS_FILE.read_text() if BOUNDS_FILE.exists() else ""
    if current != text:
        print(f"{BOUNDS_FILE} differs from the core's bounds: run python -m hean.limits --write")
        return 1
    print(f"{BOUNDS_FILE} matches the core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
