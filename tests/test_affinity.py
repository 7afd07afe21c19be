"""HEAN_CPU_AFFINITY: parsing with clear errors, the pin-then-exec wrapper, a pinned Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from hean.affinity import AffinityError, for_process, parse_affinity, parse_cpus, pinned_argv
from hean.redis_server import PrivateRedis

USABLE = sorted(os.sched_getaffinity(0))


def test_cpu_lists_use_taskset_syntax() -> None:
    assert parse_cpus("0") == {0}
    assert parse_cpus("0-2") == {0, 1, 2}
    assert parse_cpus("0,2-3, 5") == {0, 2, 3, 5}


def test_a_table_names_processes_and_a_default() -> None:
    table = parse_affinity("redis=0; web=0 ;*=1", available=frozenset({0, 1}))
    assert for_process("redis", table) == {0}
    assert for_process("web", table) == {0}
    assert for_process("worker-engine", table) == {1}  # "*": every process not named
    assert for_process("web", parse_affinity("redis=0", available=frozenset({0}))) is None
    assert parse_affinity("") == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("web", "'web' should look like name=cpus"),
        ("web=", "should look like name=cpus"),
        ("webb=0", "unknown process 'webb'; known: *, beat, flower, history, redis, web,"),
        ("web=0;web=1", "'web' is given twice"),
        ("web=x", "'x' is not a CPU list"),
        ("web=3-1", "CPU range '3-1' runs backwards"),
        ("web=7", "web=7 names CPU(s) [7] that are not available; available: [0, 1]"),
    ],
)
def test_bad_tables_are_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(AffinityError, match="HEAN_CPU_AFFINITY") as caught:
        parse_affinity(spec, available=frozenset({0, 1}))
    assert message in str(caught.value)


def test_settings_expose_the_parsed_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from hean.config import Settings

    monkeypatch.setenv("HEAN_CPU_AFFINITY", f"web={USABLE[0]}")
    assert Settings().cpu_table == {"web": frozenset({USABLE[0]})}
    monkeypatch.setenv("HEAN_CPU_AFFINITY", "web=0;ghost=0")
    with pytest.raises(AffinityError, match="unknown process 'ghost'"):
        _ = Settings().cpu_table


def test_the_wrapper_pins_sets_the_niceness_then_becomes_the_command() -> None:
    probe = "import os; print(sorted(os.sched_getaffinity(0)), os.getpriority(0, 0), os.getpid())"
    table = {"web": frozenset({USABLE[-1]})}
    argv = pinned_argv(sys.executable, "web", [sys.executable, "-c", probe], table, {"*": 7})
    assert argv[:3] == [sys.executable, "-m", "hean.affinity"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate(timeout=30)
    cpus, nice, pid = out.rsplit(" ", 2)
    assert cpus == str([USABLE[-1]]) and int(nice) == 7  # raising niceness needs no privilege
    assert int(pid) == process.pid  # exec, not a child: signals reach the real process
    # idle: SCHED_IDLE, which any user may choose for their own process
    probe = "import os; print(os.sched_getscheduler(0) == os.SCHED_IDLE, os.getpid())"
    argv = pinned_argv(sys.executable, "history", [sys.executable, "-c", probe], {}, {"history": "idle"})
    assert argv[argv.index("--nice") + 1] == "idle"
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=30, check=True).stdout
    assert out.split()[0] == "True"
    # a process both tables leave alone is started as is
    assert pinned_argv(sys.executable, "beat", ["celery", "beat"], table, {"web": 1}) == ["celery", "beat"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cpus", "zero"], "'zero' is not a CPU list"),
        (["--nice", "high"], "invalid literal"),
        (["--cpu", "0"], "usage: python -m hean.affinity"),
        (["--cpus"], "usage: python -m hean.affinity"),
    ],
)
def test_the_wrapper_refuses_bad_options_clearly(options: list[str], message: str) -> None:
    argv = [sys.executable, "-m", "hean.affinity", *options, "--", "true"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr


def test_niceness_tables_parse_with_clear_errors() -> None:
    from hean.affinity import DEFAULT_NICE, parse_nice

    assert parse_nice(DEFAULT_NICE) == {"beat": -10, "worker-pulse": -10, "history": "idle"}
    assert parse_nice("*=3; web=-1; history=idle") == {"*": 3, "web": -1, "history": "idle"}
    for spec, message in (
        ("beat", "should look like name=niceness"),
        ("redis=1", "unknown process 'redis'"),
        ("beat=fast", "beat=fast is not a whole number nor idle"),
        ("beat=IDLE", "beat=IDLE is not a whole number nor idle"),
        ("beat=-21", "outside -20..19"),
        ("beat=1;beat=2", "'beat' is given twice"),
    ):
        with pytest.raises(AffinityError, match="HEAN_NICE") as caught:
            parse_nice(spec)
        assert message in str(caught.value)


def test_a_pinned_private_redis_runs_every_thread_on_its_cpus(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis", cpus=frozenset({USABLE[-1]}))
    server.start()
    try:
        assert server.pid is not None
        process = psutil.Process(server.pid)
        threads = [t.id for t in process.threads()]
        assert len(threads) > 1  # valkey starts background threads: they must be pinned too
        for tid in threads:
            assert os.sched_getaffinity(tid) == {USABLE[-1]}
    finally:
        server.stop()
