"""`python -m workers worker` and `python -m workers beat` (workers/__main__.py), the way `hean
up` and docker-compose start the Celery workers and beat: Celery's own `worker` and `beat`
commands with the same options as `celery -A workers worker|beat`, without importing the rest of
Celery's command line (Flower's plugin, prompt_toolkit). Every system test runs its workers and
beat this way (hean.processes)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from hean.processes import PROCESSES

PROBE = """
import sys
from workers.__main__ import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("exit", code, "flower", "flower" in sys.modules, "prompt_toolkit", "prompt_toolkit" in sys.modules)
"""


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))


@pytest.mark.parametrize(
    ("command", "some_options"),
    [
        ("worker", {"-Q", "--queues", "-P", "--pool", "--without-gossip", "-E"}),
        # beat too: the pulse waits for its restart (`--help` alone used 0.58-0.95 s of CPU
        # through `celery`, 0.42-0.45 s this way, five times each in turns)
        ("beat", {"-S", "--scheduler", "-l", "--loglevel", "--max-interval"}),
    ],
)
def test_the_command_has_celerys_options_without_its_other_commands(
    command: str, some_options: set[str]
) -> None:
    lean = _run(sys.executable, "-c", PROBE, command, "--help")
    assert lean.returncode == 0, lean.stderr
    assert f"Usage: python -m workers {command} [OPTIONS]" in lean.stdout
    assert lean.stdout.rstrip().endswith("exit 0 flower False prompt_toolkit False"), lean.stdout[-300:]
    celery = _run(sys.executable, "-m", "celery", "-A", "workers", command, "--help")
    assert celery.returncode == 0, celery.stderr
    # the same options: celery's umbrella adds none to its command
    assert _options(lean.stdout) == _options(celery.stdout)
    assert some_options <= _options(lean.stdout)


def test_anything_else_gets_the_usage_and_bad_options_celerys_error() -> None:
    for argv in ([], ["multi"], ["inspect", "ping"]):
        run = _run(sys.executable, "-m", "workers", *argv)
        assert run.returncode == 2 and "usage: python -m workers worker" in run.stderr, run
    for command in ("worker", "beat"):
        bad = _run(sys.executable, "-m", "workers", command, "--no-such-option")
        assert bad.returncode == 2 and "No such option '--no-such-option'" in bad.stderr, bad.stderr


def test_hean_up_starts_every_worker_and_beat_this_way() -> None:
    workers = [spec for spec in PROCESSES if spec.name.startswith("worker-")]
    assert workers and all(spec.module == "workers" and spec.args[0] == "worker" for spec in workers)
    [beat] = [spec for spec in PROCESSES if spec.name == "beat"]
    assert (beat.module, beat.args[0]) == ("workers", "beat")
