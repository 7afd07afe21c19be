"""One object per process, made on first use under a lock (the exchange session, the error analyzer, ...)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ProcessWide(Generic[T]):
    """Holds this process's one `T`: `get()` makes it with `make` the first time (once, whatever
    the threads), `set()` replaces it, and `set(None)` has the next `get()` make a new one.

    functools.cache would do for `get` alone, but it may call `make` twice when two threads
    race, and it has no `set`.
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value

    def set(self, value: T | None) -> None:
        with self._lock:
            self._value = value
