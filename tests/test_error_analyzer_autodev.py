"""Auto-dev: patches applied only through every gate, and rolled back byte for byte otherwise.

Each test builds a small project tree of its own (some with git, some without) whose test
command is a real subprocess; the end-to-end test gets its patch from the local LLM server
through the real SDK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hean.analyzer.autodev import AutoDev, is_denied
from hean.analyzer.models import FixSuggestion
from hean.config import Settings
from hean.core.system.error_analyzer import ErrorAnalyzer
from hean.db import open_database
from llm_server import CALC_FIX_PATCH, CALC_SOURCE, LLMServer, fix_reply, suggestion

BUGGY, GOOD_PATCH = CALC_SOURCE, CALC_FIX_PATCH  # app/calc.py of the trees below, and its fix

CHECK = (
    "import sys\nsys.path.insert(0, '.')\nfrom app.calc import ratio\n"
    "assert ratio([]) == 0.0, 'empty'\nassert ratio([1, 3]) == 2.0\n"
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for folder in ("app", "hean", "tests"):
        (root / folder).mkdir(parents=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "calc.py").write_text(BUGGY)
    (root / "hean" / "engine.py").write_text("LIMIT = 10\n")
    (root / "tests" / "test_calc.py").write_text("def test_x():\n    assert True\n")
    (root / "check.py").write_text(CHECK)
    (root / "outside.py").write_text("X = 1\n")
    return root


def autodev(tree: Path, command: str = "python check.py", timeout: float = 60.0) -> AutoDev:
    return AutoDev(
        tree,
        tree.parent / "home" / "autodev",
        allow=("app/", "hean/"),
        min_confidence=0.8,
        test_command=command,
        test_timeout=timeout,
        log_path=tree.parent / "home" / "logs" / "autodev.log",
    )


def fix(patch: str, **fields: object) -> FixSuggestion:
    return FixSuggestion.model_validate(suggestion(patch=patch, affected_files=["app/calc.py"], **fields))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts
    }


def log_entries(tree: Path) -> list[dict[str, object]]:
    path = tree.parent / "home" / "logs" / "autodev.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_untouched_with_backup(tree: Path, before: dict[str, tuple[bytes, int]], outcome: object) -> None:
    assert snapshot(tree) == before
    backup = Path(outcome.backup_dir)  # type: ignore[attr-defined]
    assert (backup / "manifest.json").exists()
    assert log_entries(tree)[-1]["attempt_id"] == outcome.attempt_id  # type: ignore[attr-defined]


# -- end to end: model -> gates -> tests -> applied --------------------------------------------------


@pytest.fixture
def analyzer(
    tmp_path: Path, tree: Path, llm_server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ErrorAnalyzer]:
    llm_server.reset()
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.openai_base_url)
    settings = Settings(
        HEAN_HOME=str(tmp_path / "home"),
        OPENAI_API_KEY="sk-test-0123456789abcdefghij",
        AUTO_DEV_MODE="true",
        HEAN_AUTODEV_ALLOW="app/",
        HEAN_AUTODEV_TEST_COMMAND="python check.py",
        HEAN_AUTODEV_ROOT=str(tree),
        HEAN_LLM_MAX_RETRIES="0",
    )
    db = open_database(f"sqlite:///{tmp_path / 'hean.db'}")
    made = ErrorAnalyzer(settings, database=db)
    yield made
    made.close()
    db.dispose()


def run_buggy(tree: Path) -> BaseException:
    result = subprocess.run([sys.executable, "check.py"], cwd=tree, capture_output=True, check=False)
    assert result.returncode != 0  # the bug is real before the fix
    sys.path.insert(0, str(tree))
    try:
        import importlib

        calc = importlib.import_module("app.calc")
        calc = importlib.reload(calc)
        try:
            calc.ratio([])
        except ZeroDivisionError as exc:
            return exc
    finally:
        sys.path.remove(str(tree))
        sys.modules.pop("app.calc", None)
        sys.modules.pop("app", None)
    raise AssertionError("no error")


def test_a_good_low_risk_patch_from_the_model_is_applied(
    analyzer: ErrorAnalyzer, tree: Path, llm_server: LLMServer
) -> None:
    llm_server.script(fix_reply(patch=GOOD_PATCH, affected_files=["app/calc.py"], confidence=0.95))
    analysis = analyzer.analyze_error_sync(run_buggy(tree))
    assert analysis.status == "ok" and analysis.autodev is not None
    assert analysis.autodev["applied"] is True and analysis.autodev["stage"] == "applied"
    assert analysis.autodev["test_returncode"] == 0
    assert (tree / "app" / "calc.py").read_text() == BUGGY.replace(
        "return total / len(values)", "return total / len(values) if values else 0.0"
    )
    assert subprocess.run([sys.executable, "check.py"], cwd=tree, check=False).returncode == 0
    stored = analyzer.history.get(analysis.id)
    assert stored is not None and stored["autodev"]["applied"] is True
    backup = Path(analysis.autodev["backup_dir"])
    assert (backup / "files" / "app" / "calc.py").read_text() == BUGGY
    assert log_entries(tree)[-1]["applied"] is True


def test_auto_dev_is_off_by_default(
    tmp_path: Path, tree: Path, llm_server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm_server.reset()
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.openai_base_url)
    llm_server.script(fix_reply(patch=GOOD_PATCH, confidence=0.95))
    settings = Settings(
        HEAN_HOME=str(tmp_path / "home"), HEAN_AUTODEV_ROOT=str(tree), HEAN_LLM_MAX_RETRIES="0"
    )
    assert settings.auto_dev_mode is False
    db = open_database(f"sqlite:///{tmp_path / 'off.db'}")
    off = ErrorAnalyzer(settings, database=db)
    try:
        analysis = off.analyze_error_sync(run_buggy(tree))
    finally:
        off.close()
        db.dispose()
    assert analysis.status == "ok" and analysis.autodev is None
    assert (tree / "app" / "calc.py").read_text() == BUGGY


# -- gates ---------------------------------------------------------------------------------------------


def test_a_syntax_breaking_patch_is_refused(tree: Path) -> None:
    before = snapshot(tree)
    broken = GOOD_PATCH.replace("if values else 0.0", "if values else (")
    outcome = autodev(tree).attempt(fix(broken))
    assert (outcome.applied, outcome.stage) == (False, "compile")
    assert_untouched_with_backup(tree, before, outcome)


def test_a_patch_that_adds_lint_errors_is_refused(tree: Path) -> None:
    before = snapshot(tree)
    outcome = autodev(tree).attempt(fix(GOOD_PATCH.replace("else 0.0", "else fallback_value")))
    assert (outcome.applied, outcome.stage) == (False, "lint")
    assert "F821" in outcome.reason
    assert_untouched_with_backup(tree, before, outcome)


@pytest.mark.parametrize(
    "path",
    [
        "../outside.py",
        "app/../../outside.py",
        "/etc/passwd",
        "hean/engine.py",  # allow-listed prefix, but the deny-list wins
        "tests/test_calc.py",
        "check.py",  # inside the tree, not allow-listed
        "app/missing.py",  # auto-dev never creates files
    ],
)
def test_paths_outside_the_allow_list_or_on_the_deny_list_are_refused(tree: Path, path: str) -> None:
    before = snapshot(tree)
    patch = f"{path}\n<<<<<<< SEARCH\nX = 1\n=======\nX = 2\n>>>>>>> REPLACE\n"
    outcome = autodev(tree).attempt(fix(patch))
    assert (outcome.applied, outcome.stage) == (False, "paths"), outcome.reason
    assert_untouched_with_backup(tree, before, outcome)


def test_symlinks_are_resolved_before_the_checks(tree: Path) -> None:
    (tree / "app" / "engine_link.py").symlink_to(tree / "hean" / "engine.py")
    (tree / "app" / "escape.py").symlink_to(tree / "outside.py")
    before = snapshot(tree)
    for link, search in (("app/engine_link.py", "LIMIT = 10"), ("app/escape.py", "X = 1")):
        patch = f"{link}\n<<<<<<< SEARCH\n{search}\n=======\n{search}0\n>>>>>>> REPLACE\n"
        outcome = autodev(tree).attempt(fix(patch))
        assert (outcome.applied, outcome.stage) == (False, "paths"), outcome.reason
    assert snapshot(tree) == before


def test_deny_list_names_the_order_risk_money_and_concurrency_code() -> None:
    for path in (
        "hean/engine.py",
        "cpp_ext/engine.cpp",
        "workers/engine.py",
        "hean/commands/registry.py",
        "workers/shard.py",
        "workers/execution.py",
        "web/intake.py",
        "hean/command_journal.py",
        "hean/core/system/redis_state.py",
        "celeryconfig.py",
        "hean/config.py",
        "tests/test_engine.py",
        "web/test_helpers_test.py",
        ".env.production",
        "hean/analyzer/autodev.py",
    ):
        assert is_denied(path), path
    assert not is_denied("web/health.py") and not is_denied("hean/core/system/probes.py")


@pytest.mark.parametrize(
    ("patch", "fields", "stage"),
    [
        (GOOD_PATCH, {"risk": "medium"}, "gate"),
        (GOOD_PATCH, {"confidence": 0.8}, "gate"),  # must be above the threshold
        ("", {}, "gate"),
        (GOOD_PATCH.replace("return total / len(values)\n=", "return total  /  len(values)\n="), {}, "patch"),
        ("app/calc.py\n<<<<<<< SEARCH\n=======\nX = 1\n>>>>>>> REPLACE\n", {}, "patch"),  # empty SEARCH
        ("please just fix it", {}, "patch"),
    ],
)
def test_gates_and_inexact_patches_are_refused(
    tree: Path, patch: str, fields: dict[str, object], stage: str
) -> None:
    before = snapshot(tree)
    outcome = autodev(tree).attempt(fix(patch, **fields))
    assert (outcome.applied, outcome.stage) == (False, stage), outcome.reason
    assert_untouched_with_backup(tree, before, outcome)


def test_a_search_block_matching_twice_is_refused(tree: Path) -> None:
    (tree / "app" / "calc.py").write_text(
        BUGGY + "\n\ndef again(values):\n    total = sum(values)\n    return 0\n"
    )
    before = snapshot(tree)
    patch = "app/calc.py\n<<<<<<< SEARCH\n    total = sum(values)\n=======\n    total = 0\n>>>>>>> REPLACE\n"
    outcome = autodev(tree).attempt(fix(patch))
    assert (outcome.stage, outcome.reason) == (
        "patch",
        "a SEARCH block matches 2 times in app/calc.py (must be once)",
    )
    assert snapshot(tree) == before


UNIFIED = """--- a/app/calc.py
+++ b/app/calc.py
@@ -1,3 +1,5 @@
 def ratio(values):
+    if not values:
+        return 0.0
     total = sum(values)
     return total / len(values)
"""


def test_a_unified_diff_applies_exactly(tree: Path) -> None:
    outcome = autodev(tree).attempt(fix(UNIFIED))
    assert outcome.applied, outcome.reason
    assert (tree / "app" / "calc.py").read_text().startswith("def ratio(values):\n    if not values:\n")


def test_a_unified_diff_with_wrong_context_is_refused(tree: Path) -> None:
    before = snapshot(tree)
    outcome = autodev(tree).attempt(fix(UNIFIED.replace(" def ratio(values):", " def ratio(items):")))
    assert (outcome.applied, outcome.stage) == (False, "patch")
    assert_untouched_with_backup(tree, before, outcome)


# -- the test command and the rollback ---------------------------------------------------------------


@pytest.mark.parametrize("with_git", [False, True])
def test_a_patch_that_fails_the_tests_is_rolled_back_byte_for_byte(tree: Path, with_git: bool) -> None:
    calc = tree / "app" / "calc.py"
    calc.write_bytes(BUGGY.replace("\n", "\r\n").encode() + b"# no newline at the end")
    os.chmod(calc, 0o751)
    if with_git:
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "core.autocrlf=false"]
        subprocess.run([*git, "init", "-q"], cwd=tree, check=True)
        subprocess.run([*git, "add", "-A"], cwd=tree, check=True)
        subprocess.run([*git, "commit", "-qm", "base"], cwd=tree, check=True)
    before = snapshot(tree)
    # applies and passes every check, but keeps dividing by zero: check.py fails
    patch = GOOD_PATCH.replace("if values else 0.0", "if values else total / 0")
    outcome = autodev(tree).attempt(fix(patch))
    assert (outcome.applied, outcome.stage, outcome.rolled_back) == (False, "tests", True)
    assert outcome.test_returncode not in (0, None) and "AssertionError" not in outcome.reason
    assert "ZeroDivisionError" in outcome.test_output_tail
    assert snapshot(tree) == before
    assert calc.stat().st_mode & 0o7777 == 0o751 and b"\r\n" in calc.read_bytes()
    if with_git:
        status = subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True)
        assert status.stdout == ""


def test_crlf_files_are_patched_in_their_own_line_endings(tree: Path) -> None:
    calc = tree / "app" / "calc.py"
    calc.write_bytes(BUGGY.replace("\n", "\r\n").encode())
    outcome = autodev(tree).attempt(fix(GOOD_PATCH))
    assert outcome.applied, outcome.reason
    data = calc.read_bytes()
    assert b"if values else 0.0\r\n" in data and data.count(b"\n") == data.count(b"\r\n")


def test_a_test_command_that_hangs_is_stopped_and_rolled_back(tree: Path) -> None:
    before = snapshot(tree)
    (tree / "hang.py").write_text("import time\ntime.sleep(60)\n")
    before = snapshot(tree)
    outcome = autodev(tree, command="python hang.py", timeout=1.0).attempt(fix(GOOD_PATCH))
    assert (outcome.applied, outcome.stage, outcome.test_returncode) == (False, "tests", -1)
    assert outcome.test_output_tail.startswith("timed out after 1 s")
    assert snapshot(tree) == before


def test_every_attempt_has_a_backup_and_a_log_line(tree: Path) -> None:
    dev = autodev(tree)
    outcomes = [
        dev.attempt(fix(GOOD_PATCH, risk="high")),
        dev.attempt(fix("../x\n")),
        dev.attempt(fix(GOOD_PATCH)),
    ]
    assert [o.stage for o in outcomes] == ["gate", "patch", "applied"]
    logged = log_entries(tree)
    assert [e["attempt_id"] for e in logged] == [o.attempt_id for o in outcomes]
    for outcome in outcomes:
        assert (Path(outcome.backup_dir) / "manifest.json").exists()
