"""Runs the C++ engine tests under AddressSanitizer + UndefinedBehaviorSanitizer via
scripts/cpp_sanitize_test.sh (CMake option HEAN_SANITIZE, executable run by ctest), so
the sanitizer build is part of the normal test run and of `.ci/run`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def test_cpp_engine_tests_pass_under_asan_and_ubsan(repo_root: Path) -> None:
    script = repo_root / "scripts" / "cpp_sanitize_test.sh"
    assert shutil.which("bash") is not None
    env = dict(os.environ)
    env["BUILD_DIR"] = str(repo_root / "build" / "asan")
    done = subprocess.run(
        ["bash", str(script)],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "100% tests passed" in output
    cache = (repo_root / "build" / "asan" / "CMakeCache.txt").read_text()
    assert "HEAN_SANITIZE:BOOL=ON" in cache
