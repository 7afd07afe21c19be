"""Garbage collection in HEAN's long-running processes: what a process loaded to start is
frozen out of the cyclic collector once it is ready to serve.

A full (generation 2) collection walks every container object the process holds. Most of
them are what its imports made (functions, classes, their dicts and tuples: 75,000-130,000
objects in the web, the engine worker and the history writer) and live as long as it does.
Measured under 25,000 orders/s in 100-order commands (``benchmarks/bench_gc.py`` and
``benchmarks/bench_orders.py``), such a collection took 70-120 ms of CPU in each of those
processes, and every order in flight waited for it: they made most of the slices whose
p99 submit-to-result went over 100 ms. ``gc.freeze()`` moves the objects alive at that
moment to a permanent generation that collections skip; what the process allocates later
is collected as before, so a reference cycle made while serving is still freed.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_startup_objects(process: str) -> int:
    """Collect what starting up left behind, then freeze the rest out of later collections.
    Call once the process is ready to serve; returns how many objects were frozen.

    Logs what a full collection cost before and after (CPU time, which a busy machine does
    not inflate): ``benchmarks/bench_gc.py`` reads it from each process of the system."""
    gc.collect()  # what starting up left behind
    before = _full_collection_s()  # what each full collection would cost from now on
    gc.freeze()
    frozen = gc.get_freeze_count()
    after = _full_collection_s()
    log.info(
        "event=gc_frozen process=%s objects=%d full_collection_ms_before=%.3f full_collection_ms_after=%.3f",
        process,
        frozen,
        1000 * before,
        1000 * after,
    )
    return frozen


def _full_collection_s() -> float:
    started = time.thread_time()
    gc.collect()
    return time.thread_time() - started
