"""CPU affinity for HEAN's processes: ``HEAN_CPU_AFFINITY``.

On small virtual machines, waking a process that sleeps on *another* CPU is expensive: the
sleeping virtual CPU has halted and the hypervisor must wake it. Measured on the 2-core
machines HEAN is developed on, a loopback round trip between two processes took 0.1 to 0.4 ms
across CPUs and about 0.03 ms when both ran on the same CPU. Whether a layout pays depends
on the traffic: Redis and its writers on one CPU met every state-bus target
(``benchmarks/bench_state.py``), while Redis and the web process on one CPU made acks slower,
because the engine worker's own Redis traffic then competes with the web process for that CPU
(``benchmarks/bench_ack.py`` prints both layouts). Measure before choosing one.

The setting maps process names to CPU lists, in ``taskset -c`` syntax::

    HEAN_CPU_AFFINITY="redis=0;web=0;*=1"

Names are those of :data:`hean.processes.PROCESSES` plus ``redis`` (the private server;
an external ``REDIS_URL`` is not ours to pin) and ``*`` for every process not named. Unset
or empty, nothing is pinned. Each process is pinned as it starts (``python -m hean.affinity``
sets the affinity and then execs the real command), so a restarted process keeps its CPUs.

``HEAN_NICE`` sets scheduling priority the same way (``name=niceness``, -20..19, or ``idle``;
default ``beat=-10;worker-pulse=-10;history=idle``). Raising a priority needs root or
CAP_SYS_NICE; without it the process logs a warning and runs at its normal priority. ``idle``
is Linux's SCHED_IDLE: the process runs only on CPU time no other process wants, which any
user may choose for their own process. The history writer runs so by default: it is off every
hot path (its stream waits in Redis, durable, until it is written), and while orders flow it
is the largest user of CPU, so at normal priority it took CPU from the web process and the
engine worker exactly when they needed it (bench_orders at 25,000 orders/s: p50 20-21 ms at
normal priority, 14-16 ms idle, 14-15 ms with no history writer at all). On a machine busy
for long, the database then falls behind (``hean_history_lag_seconds`` shows by how much), and
the writer runs at normal priority until it has caught up (hean.history.CatchUpPriority).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, TypeVar

ENV = "HEAN_CPU_AFFINITY"
NICE_ENV = "HEAN_NICE"
#: The pulse is the system's clock: beat and the pulse worker go first when the CPUs are busy
#: (bench_pulse: jitter p99 under 1,000 single orders/s went from 10-12 ms to about 6 ms); the
#: history writer goes last (see above).
DEFAULT_NICE = "beat=-10;worker-pulse=-10;history=idle"
#: The niceness that asks for SCHED_IDLE.
IDLE: Literal["idle"] = "idle"
REDIS = "redis"
OTHERS = "*"

CpuTable = Mapping[str, frozenset[int]]
#: A niceness (-20..19) or IDLE.
Niceness = int | Literal["idle"]
T = TypeVar("T")


class AffinityError(ValueError):
    """HEAN_CPU_AFFINITY does not parse, names an unknown process or an unusable CPU."""


def _known_names() -> set[str]:
    from hean.processes import process_names

    return {*process_names(), REDIS, OTHERS}


def parse_cpus(text: str) -> frozenset[int]:
    """``"0"``, ``"0-3"``, ``"0,2-3"`` -> a set of CPU numbers (taskset -c syntax)."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise AffinityError(f"{ENV}: {text!r} is not a CPU list (examples: 0  0-3  0,2-3)")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise AffinityError(f"{ENV}: CPU range {part!r} runs backwards")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def _entries(variable: str, spec: str, known: set[str], example: str) -> Iterator[tuple[str, str]]:
    """The ``name=value`` pairs of a ``;``-separated table, each name known and given once."""
    seen: set[str] = set()
    for entry in spec.replace("\n", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        name, equals, value = (part.strip() for part in entry.partition("="))
        if not equals or not name or not value:
            raise AffinityError(f"{variable}: {entry!r} should look like {example}")
        if name not in known:
            raise AffinityError(f"{variable}: unknown process {name!r}; known: {', '.join(sorted(known))}")
        if name in seen:
            raise AffinityError(f"{variable}: {name!r} is given twice")
        seen.add(name)
        yield name, value


def parse_affinity(spec: str, available: frozenset[int] | None = None) -> dict[str, frozenset[int]]:
    """Parse ``name=cpus;name=cpus`` into a table; raises AffinityError naming the problem.

    Every CPU must be one this process may run on (``os.sched_getaffinity``).
    """
    usable = available if available is not None else frozenset(os.sched_getaffinity(0))
    table: dict[str, frozenset[int]] = {}
    for name, cpu_text in _entries(ENV, spec, _known_names(), "name=cpus, e.g. web=0"):
        cpus = parse_cpus(cpu_text)
        missing = sorted(cpus - usable)
        if missing:
            raise AffinityError(
                f"{ENV}: {name}={cpu_text} names CPU(s) {missing} that are not available; "
                f"available: {sorted(usable)}"
            )
        table[name] = cpus
    return table


def for_process(name: str, table: Mapping[str, T]) -> T | None:
    """`name`'s entry in a table (its CPUs, its niceness), else the ``*`` entry, else None
    (free to run anywhere, at the inherited priority)."""
    return table.get(name, table.get(OTHERS))


def parse_nice(spec: str) -> dict[str, Niceness]:
    """Parse HEAN_NICE, ``name=niceness;...`` (-20..19, lower runs first, or ``idle``); raises
    AffinityError."""
    table: dict[str, Niceness] = {}
    for name, value in _entries(NICE_ENV, spec, _known_names() - {REDIS}, "name=niceness, e.g. beat=-5"):
        if value == IDLE:
            table[name] = IDLE
            continue
        try:
            nice = int(value)
        except ValueError:
            raise AffinityError(f"{NICE_ENV}: {name}={value} is not a whole number nor {IDLE}") from None
        if not -20 <= nice <= 19:
            raise AffinityError(f"{NICE_ENV}: {name}={nice} is outside -20..19")
        table[name] = nice
    return table


def pinned_argv(
    python: str, name: str, argv: Sequence[str], table: CpuTable, nice: Mapping[str, Niceness] | None = None
) -> list[str]:
    """`argv`, wrapped so that the process pins itself (and sets its niceness) first when the
    tables say so."""
    cpus = for_process(name, table)
    niceness = for_process(name, nice or {})
    if cpus is None and niceness is None:
        return list(argv)
    wrapper = [python, "-m", "hean.affinity"]
    if cpus is not None:
        wrapper += ["--cpus", ",".join(map(str, sorted(cpus)))]
    if niceness is not None:
        wrapper += ["--nice", str(niceness)]
    return [*wrapper, "--", *argv]


def pin_self(cpus: frozenset[int] | None) -> None:
    """Pin the calling process (a child inherits it); no-op for None."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def set_nice(nice: Niceness) -> str | None:
    """Set this process's niceness (IDLE: the SCHED_IDLE policy); a warning (not an error) when
    the OS does not allow it."""
    if isinstance(nice, str):  # IDLE
        policy = getattr(os, "SCHED_IDLE", None)
        if policy is None:
            return "hean.affinity: warning: SCHED_IDLE is Linux's; running at normal priority"
        os.sched_setscheduler(0, policy, os.sched_param(0))
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        return (
            f"hean.affinity: warning: cannot set niceness {nice} (needs root or CAP_SYS_NICE); "
            f"running at {current}"
        )
    return None


USAGE = "usage: python -m hean.affinity [--cpus LIST] [--nice N] -- COMMAND [ARGS...]"


def main(args: Sequence[str] | None = None) -> None:
    """``python -m hean.affinity [--cpus LIST] [--nice N] -- COMMAND...``: pin and set the
    niceness, then become COMMAND (same pid, so signals reach it)."""
    argv = list(sys.argv[1:] if args is None else args)
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        raise SystemExit(USAGE)
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    if len(options) % 2 or any(flag not in ("--cpus", "--nice") for flag in options[::2]):
        raise SystemExit(USAGE)
    chosen = dict(zip(options[::2], options[1::2], strict=True))
    try:
        if "--cpus" in chosen:
            pin_self(parse_cpus(chosen["--cpus"]))
        if "--nice" in chosen:
            value = chosen["--nice"]
            warning = set_nice(IDLE if value == IDLE else int(value))
            if warning:
                print(warning, file=sys.stderr, flush=True)
    except (AffinityError, OSError, ValueError) as exc:
        raise SystemExit(f"hean.affinity: {exc}") from exc
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
