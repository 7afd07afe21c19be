"""The sync face's acks made on demand (hean.client._AckOnDemand): the same Future whenever it is
asked for, settled once, before or after it was first asked for, from any thread."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from hean.client import CommandRejected, _AckOnDemand


def test_an_ack_settled_before_anyone_asked_is_a_done_future_with_its_value() -> None:
    ack = _AckOnDemand()
    ack.set_result({"accepted": True})
    future = ack.get()
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(0) == {"accepted": True}
    assert ack.get() is future


def test_an_ack_asked_for_first_is_pending_until_it_settles() -> None:
    ack = _AckOnDemand()
    future = ack.get()
    assert not future.done()
    ack.set_result({"accepted": True, "request_id": "r.1"})
    assert future.result(0)["request_id"] == "r.1"
    assert ack.get() is future


@pytest.mark.parametrize("asked_first", [True, False])
def test_a_refused_ack_fails_with_its_error(asked_first: bool) -> None:
    ack = _AckOnDemand()
    error = CommandRejected("invalid_params", "quantity: must be greater than 0")
    future = ack.get() if asked_first else None
    ack.set_exception(error)
    assert (future or ack.get()).exception(0) is error


@pytest.mark.parametrize("asked_first", [True, False])
def test_an_ack_settles_once(asked_first: bool) -> None:
    ack = _AckOnDemand()
    if asked_first:
        ack.get()
    ack.set_result(1)
    with pytest.raises(concurrent.futures.InvalidStateError):
        ack.set_result(2)
    with pytest.raises(concurrent.futures.InvalidStateError):
        ack.set_exception(RuntimeError("late"))
    assert ack.get().result(0) == 1


def test_an_ack_its_owner_cancelled_refuses_the_settlement_as_a_future_does() -> None:
    ack = _AckOnDemand()
    assert ack.get().cancel()
    with pytest.raises(concurrent.futures.InvalidStateError):
        ack.set_result(1)  # Client._settle passes over exactly this
    assert ack.get().cancelled()


def race(asking: int) -> list[concurrent.futures.Future[object]]:
    """`asking` threads ask for one ack while another settles it, all let go at once."""
    ack = _AckOnDemand()
    got: list[concurrent.futures.Future[object]] = []
    start = threading.Barrier(asking + 1)

    def ask() -> None:
        start.wait()
        got.append(ack.get())

    def settle() -> None:
        start.wait()
        ack.set_result("acked")

    threads = [threading.Thread(target=ask) for _ in range(asking)] + [threading.Thread(target=settle)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return got


def test_threads_asking_while_another_settles_all_get_the_one_settled_future() -> None:
    for _ in range(200):
        got = race(4)
        assert len(got) == 4 and all(future is got[0] for future in got)
        assert got[0].result(1) == "acked"
