"""hean.fastjson reads and writes what the standard library does, value for value."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from hean import fastjson

VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    2**64 + 5,
    -(2**70),
    0.1,
    1e300,
    -2.5e-310,
    "",
    'müde ✓ \u2028 \x00 "q"',
    [],
    {},
    {"a": [1, {"b": None}], "c": "d"},
    {1: "int key", "s": 2},
    [1.5, "x", [True, False]],
    {"nested": {"deep": [{"k": "v"} for _ in range(50)]}},
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_writes_what_compact_json_dumps_reads_back_equal(value: Any) -> None:
    encoded = fastjson.dumps(value, separators=(",", ":"))
    assert json.loads(encoded) == json.loads(json.dumps(value, separators=(",", ":")))


@pytest.mark.parametrize("value", [*VALUES, [2**70, "big"], {"\u00e9": "\ud800"}])
def test_dumpb_is_dumps_encoded(value: Any) -> None:
    assert fastjson.dumpb(value) == fastjson.dumps(value).encode()


@pytest.mark.parametrize("value", VALUES)
def test_loads_reads_what_the_standard_library_reads(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, separators=(",", ":"), ensure_ascii=False)):
        for data in (text, text.encode()):
            got, expected = fastjson.loads(data), json.loads(data)
            assert got == expected and type(got) is type(expected)
            assert json.dumps(got) == json.dumps(expected)  # integers stay integers, exactly


@pytest.mark.parametrize(
    "text",
    [
        "[9223372036854775807, 9223372036854775808]",
        '{"id": 12345678901234567890123}',
        "NaN",
        "[Infinity, -Infinity]",
        '"\\ud800"',
        '"\ud800"',
        "1e400",
        '{"a": 1, "a": 2}',
        '"1234567890123456789"',
    ],
)
def test_loads_agrees_with_the_standard_library_at_the_edges(text: str) -> None:
    got, expected = fastjson.loads(text), json.loads(text)
    assert json.dumps(got) == json.dumps(expected)


@pytest.mark.parametrize("text", ["", "{", "[1,]", "{'a': 1}", '"unterminated', "01", b"\xff"])
def test_bad_json_gets_the_standard_librarys_error(text: str | bytes) -> None:
    with pytest.raises(json.JSONDecodeError if isinstance(text, str) else ValueError):
        fastjson.loads(text)


def test_other_options_are_the_standard_librarys() -> None:
    value = {"b": 1, "a": [1, 2]}
    assert fastjson.dumps(value, indent=2, sort_keys=True) == json.dumps(value, indent=2, sort_keys=True)
    assert fastjson.dumps(value) == json.dumps(value, separators=(",", ":"))


def test_non_finite_floats_are_written_as_null_which_any_json_parser_reads() -> None:
    assert json.loads(fastjson.dumps([math.inf, -math.inf, math.nan, 1.0])) == [None, None, None, 1.0]


def test_reading_keeps_every_integer_exact() -> None:
    assert fastjson.loads("[18446744073709551621, -1e400]") == [18446744073709551621, -math.inf]
    assert fastjson.loads(b"[18446744073709551621]") == [18446744073709551621]
    assert fastjson.loads(bytearray(b"[1]")) == [1]


def test_what_no_json_can_hold_is_refused_like_the_standard_library() -> None:
    with pytest.raises(TypeError):
        fastjson.dumps({"x": object()})
