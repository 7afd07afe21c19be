"""Celery's own pytest fixtures (`celery.contrib.pytest`: `celery_session_app`,
`celery_session_worker`) run HEAN's real app in a real worker against a real Redis
(tests/celery_fixtures/suite_real_app.py). The rest of the suite runs workers as processes, as
`hean up` does; this one checks the app as Celery's testing worker loads it. It runs in a child
pytest: the app reads REDIS_URL when it is first imported, and the fixtures' worker lives in
the process that runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

SUITE = Path(__file__).resolve().parent / "celery_fixtures" / "suite_real_app.py"


def test_celerys_session_worker_runs_heans_app_against_real_redis(
    redis_client: redis.Redis, own_db_url: str, tmp_path: Path
) -> None:
    env = dict(os.environ, REDIS_URL=own_db_url, HEAN_HOME=str(tmp_path / "home"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [sys.executable, "-m", "pytest", "-p", "celery.contrib.pytest", "-p", "no:cacheprovider"]
    argv += ["-q", "--basetemp", str(tmp_path / "basetemp"), str(SUITE)]
    done = subprocess.run(argv, env=env, cwd=SUITE.parents[2], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout, done.stdout[-2000:]
