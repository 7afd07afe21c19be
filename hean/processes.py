"""The processes that make up a running HEAN system, shared by `hean up` and docker-compose.

tests/test_compose.py checks docker-compose.yml against this table, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from hean.topology import DEFAULT_QUEUE, ENGINE_QUEUE, LLM_QUEUE, PULSE_QUEUE


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised process: run as `python -m <module> <args...>`."""

    name: str
    module: str
    args: tuple[str, ...]
    description: str

    def argv(self, python: str) -> list[str]:
        return [python, "-m", self.module, *self.args]


def _worker(name: str, queues: str, pool: str, concurrency: int, description: str) -> ProcessSpec:
    return ProcessSpec(
        name=f"worker-{name}",
        # `celery -A workers worker ...` without loading the rest of Celery's command line
        # (workers/__main__.py): about 0.2 s less of every worker's start
        module="workers",
        args=(
            "worker",
            "-Q",
            queues,
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "-E",  # task events for Flower
            # no gossip or mingle: HEAN's workers share no revokes or elections, mingle costs a
            # second at every start, and gossip's restart after a lost Redis only logs errors
            "--without-gossip",
            "--without-mingle",
            "-l",
            "warning",
        ),
        description=description,
    )


PROCESSES: tuple[ProcessSpec, ...] = (
    ProcessSpec("web", "web", (), "Flask + Flask-SocketIO on eventlet"),
    # solo pool, one process: the only consumer of the engine queue, so commands apply in order
    _worker("engine", ENGINE_QUEUE, "solo", 1, "engine worker (owns the C++ core)"),
    _worker("pulse", PULSE_QUEUE, "threads", 2, "health pulse worker"),
    _worker("llm", f"{LLM_QUEUE},{DEFAULT_QUEUE}", "threads", 4, "LLM analysis + default worker"),
    # copies the history stream to the database in batches, off every hot path (hean/history.py)
    ProcessSpec("history", "hean.history", (), "history writer (commands, orders, fills -> database)"),
    # Celery's beat command without the rest of its command line (workers/__main__.py)
    ProcessSpec("beat", "workers", ("beat", "-l", "warning"), "celery beat"),
    # Flower with its event capture reconnecting within 2 s of Redis (workers/monitor.py)
    ProcessSpec("flower", "workers", ("flower",), "Flower monitor"),
)


def process_names() -> list[str]:
    return [spec.name for spec in PROCESSES]
