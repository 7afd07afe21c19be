"""Flower, with its event capture back within RECONNECT_MAX_S of Redis's return.

Flower's thread that captures the workers' events (`flower.events.Events.run`) doubles its wait
after each failed connection, without a bound. After a 120 s Redis outage Flower saw events
again 43 s after Redis came back (it had waited 1, 2, 4, ... 64 s), and for longer after longer
outages; meanwhile it showed the workers offline and no new tasks. Here kombu's
`ensure_connection` retries the connection, at most RECONNECT_MAX_S apart, and the failures are
logged as HEAN logs recurring ones (the first at once, then one every 10 s, and one line once
the events flow again).

`python -m workers flower [options]` (workers/__main__.py) runs Flower's own command with this
capture in place of Flower's: the same options, `FLOWER_*` variables and defaults as
`celery -A workers flower`. This relies on Flower's internals: the name `flower.app.Events`, by
which Flower's app makes its event thread, and that thread's `capp` and `on_event`;
pyproject.toml bounds Flower to the release they were read from.
"""

from __future__ import annotations

import _thread
import logging
import time
from typing import Any, Final

from celery.events import EventReceiver
from flower.events import Events

from hean.logs import FailureLog

log = logging.getLogger(__name__)

#: The longest wait between two tries to reach Redis again.
RECONNECT_MAX_S: Final = 2.0


class CapturedEvents(Events):
    """Flower's event thread, reconnecting at most RECONNECT_MAX_S apart."""

    def run(self) -> None:
        failures = FailureLog(log)

        def unreachable(exc: BaseException, interval: float) -> None:
            failures.failed("event=flower_events_unreachable error=%s retry_in_s=%.1f", _name(exc), interval)

        def on_event(event: dict[str, Any]) -> None:
            if failures.failures:  # the first event since a failure (a connection alone is not
                # enough: a Redis loading its data takes connections and refuses the commands)
                failures.recovered("event=flower_events_captured")
            self.on_event(event)

        while True:
            try:
                with self.capp.connection() as connection:
                    connection.ensure_connection(
                        errback=unreachable,
                        max_retries=None,
                        interval_start=0.25,
                        interval_step=0.5,
                        interval_max=RECONNECT_MAX_S,
                    )
                    receiver = EventReceiver(connection, handlers={"*": on_event}, app=self.capp)
                    receiver.capture(limit=None, timeout=None, wakeup=True)
            except (KeyboardInterrupt, SystemExit):
                _thread.interrupt_main()
                return
            except Exception as exc:  # Redis went away mid-capture, or a reply Flower could not read
                failures.failed("event=flower_events_lost error=%s retry_in_s=%.1f", _name(exc), 0.25)
                time.sleep(0.25)


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def main(args: list[str]) -> Any:
    """Flower's command (`celery -A workers flower <args>`) with CapturedEvents."""
    import sys

    import flower.app
    from celery.bin.celery import main as celery_main

    flower.app.Events = CapturedEvents  # Flower builds its thread from this name
    # Flower reads its options from sys.argv (tornado's parser) and its environment itself
    sys.argv = ["celery", "-A", "workers", "flower", *args]
    return celery_main()
