"""Auto-dev: apply a model's patch only when it is safe, and keep it only if the tests pass.

Gates, in order (the first that fails refuses the attempt and leaves every file as it was):
risk is low and confidence above the threshold; every path is relative, inside the project
tree once symlinks are resolved, under an allow-listed prefix, and on none of `DENY_LIST`
(tests, configuration, secrets, and the order, risk, money and concurrency code); the patch
applies exactly (each search/replace block matches once; a unified diff applies without fuzz);
each changed Python file compiles and `ruff` finds no error in it that the original did not
have. Then the files are written and the configured test command runs in a subprocess with a
timeout: if it fails, every file is restored byte for byte (content, mode, line endings) from
the attempt's backup, with or without git. Every attempt gets a backup directory and one JSON
line in the auto-dev log.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hean.analyzer.models import FixSuggestion

if TYPE_CHECKING:
    from unidiff import PatchedFile
from hean.analyzer.redaction import Redactor

#: Never patched automatically, whatever the allow-list says. Prefixes end with "/"; other
#: entries are fnmatch patterns on the project-relative path or on the file name.
DENY_LIST: tuple[str, ...] = (
    # tests and their fixtures: a fix must pass them, not change them
    "tests/",
    "test_*.py",
    "*_test.py",
    "conftest.py",
    # configuration, build and secrets
    "hean/config.py",
    "celeryconfig.py",
    "pyproject.toml",
    "Makefile",
    "Dockerfile",
    "docker-compose.yml",
    "CMakeLists.txt",
    ".env*",
    "*.pem",
    "*.key",
    "*secret*",
    "hean/auth.py",
    ".git/",
    ".hean/",
    ".venv/",
    "build/",
    # orders, risk, money: the C++ core and everything that carries or journals commands
    "cpp_ext/",
    "hean/_core.pyi",
    "hean/engine.py",
    "hean/exchange.py",
    "hean/messages.py",
    "hean/limits.py",
    "hean/bounds.json",
    "hean/commands/",
    "hean/command_journal.py",
    "hean/celery_wire.py",
    "workers/engine.py",
    "workers/shard.py",
    "workers/execution.py",
    "workers/commands.py",
    "web/intake.py",
    "web/commands_api.py",
    # concurrency: the state bus, the broker transport, the message fan-out, the process table
    "hean/core/system/redis_state.py",
    "hean/core/system/_state_schema.py",
    "hean/redis_server.py",
    "hean/redis_client.py",
    "hean/launcher.py",
    "hean/processes.py",
    "hean/topology.py",
    "hean/db.py",
    "workers/app.py",
    "workers/transport.py",
    "web/bus.py",
    "web/fast_ws.py",
    # the analyzer itself: it never rewrites its own gates
    "hean/analyzer/",
    "hean/core/system/error_analyzer.py",
    "workers/llm.py",
)

SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"
OUTPUT_TAIL = 4_000


class Refused(Exception):
    """The attempt stops at `stage` for `reason`; nothing stays changed."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


@dataclass
class AttemptOutcome:
    """What one auto-dev attempt did, as stored with the analysis and logged."""

    attempt_id: str
    applied: bool
    stage: str  # gate, paths, patch, compile, lint, tests, applied
    reason: str
    files: list[str] = field(default_factory=list)
    backup_dir: str = ""
    rolled_back: bool = False
    test_returncode: int | None = None
    test_output_tail: str = ""
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def is_denied(relative: str) -> bool:
    """True when the project-relative posix path is on the deny-list."""
    name = PurePosixPath(relative).name
    for entry in DENY_LIST:
        if entry.endswith("/"):
            if relative.startswith(entry) or f"/{entry}" in f"/{relative}":
                return True
        elif fnmatch.fnmatch(relative, entry) or fnmatch.fnmatch(name, entry):
            return True
    return False


def parse_search_replace(patch: str) -> list[tuple[str, str, str]]:
    """(path, search, replace) per block, in order; raises Refused on a malformed block."""
    blocks: list[tuple[str, str, str]] = []
    lines = patch.replace("\r\n", "\n").split("\n")
    i = 0
    path = ""
    while i < len(lines):
        line = lines[i]
        if line.strip() == SEARCH:
            if not path:
                raise Refused("patch", "a SEARCH block without a file path line before it")
            search: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != DIVIDER:
                search.append(lines[i])
                i += 1
            replace: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != REPLACE:
                replace.append(lines[i])
                i += 1
            if i >= len(lines):
                raise Refused("patch", "a search/replace block is not closed")
            if not "".join(search).strip():
                raise Refused("patch", "an empty SEARCH block")
            blocks.append((path, "\n".join(search) + "\n", "\n".join(replace) + "\n" if replace else ""))
        elif line.strip() and not line.strip().startswith("```"):
            path = line.strip().strip("`").strip()
        i += 1
    return blocks


def _apply_unified(patched_file: PatchedFile, original: str) -> str:
    """Apply one file's hunks exactly: context and removed lines must match (offset allowed, no fuzz)."""
    lines = original.splitlines(keepends=True)
    offset = 0
    for hunk in patched_file:
        source = [ln.value for ln in hunk if ln.is_context or ln.is_removed]
        target = [ln.value for ln in hunk if ln.is_context or ln.is_added]
        expected = max(hunk.source_start - 1, 0) + offset

        def matches(at: int, source: list[str] = source) -> bool:
            return lines[at : at + len(source)] == source

        if not matches(expected):
            spots = [at for at in range(len(lines) - len(source) + 1) if matches(at)]
            if len(spots) != 1:
                raise Refused("patch", f"a hunk does not apply exactly ({len(spots)} matching places)")
            expected = spots[0]
        lines[expected : expected + len(source)] = target
        offset = expected - (hunk.source_start - 1) + len(target) - len(source)
    return "".join(lines)


def _decode(data: bytes, relative: str) -> tuple[str, str]:
    """(text with LF line ends, the file's line ending); mixed endings are refused."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("patch", f"{relative} is not UTF-8 text") from None
    crlf = text.count("\r\n")
    if crlf and crlf != text.count("\n"):
        raise Refused("patch", f"{relative} mixes line endings")
    return (text.replace("\r\n", "\n"), "\r\n") if crlf else (text, "\n")


class AutoDev:
    """Applies suggestions under the gates above; one attempt at a time per HEAN_HOME."""

    def __init__(
        self,
        root: Path,
        work_dir: Path,
        *,
        allow: tuple[str, ...],
        min_confidence: float,
        test_command: str,
        test_timeout: float,
        redactor: Redactor | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.root = root.resolve()
        self.work_dir = work_dir
        self.allow = tuple(a.strip().lstrip("/") for a in allow if a.strip())
        self.min_confidence = min_confidence
        self.test_command = test_command
        self.test_timeout = test_timeout
        self.redactor = redactor or Redactor()
        self.log_path = log_path or work_dir / "autodev.log"

    # -- gates ---------------------------------------------------------------------------------
    def check_path(self, given: str) -> Path:
        """The real file behind `given`, or Refused: inside the tree, allow-listed, not denied."""
        raw = given.strip()
        for prefix in ("a/", "b/"):
            if raw.startswith(prefix) and not (self.root / raw).exists():
                raw = raw[len(prefix) :]
        pure = PurePosixPath(raw)
        if not raw or pure.is_absolute() or ".." in pure.parts or "\\" in raw:
            raise Refused("paths", f"{given!r} is not a plain project-relative path")
        candidate = self.root / pure
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            raise Refused("paths", f"{raw} does not exist (auto-dev never creates files)") from None
        if not real.is_relative_to(self.root) or not real.is_file():
            raise Refused("paths", f"{raw} resolves outside the project tree")
        for relative in {pure.as_posix(), real.relative_to(self.root).as_posix()}:
            if is_denied(relative):
                raise Refused("paths", f"{relative} is on the deny-list")
            if not any(relative.startswith(prefix) for prefix in self.allow):
                raise Refused("paths", f"{relative} is not under an allow-listed path {list(self.allow)}")
        return real

    def plan(self, patch: str) -> dict[Path, bytes]:
        """The new bytes of every file the patch changes (nothing written yet)."""
        if "<<<<<<< SEARCH" in patch:
            new_texts: dict[Path, tuple[str, str, bytes]] = {}
            for given, search, replace in parse_search_replace(patch):
                real = self.check_path(given)
                if real not in new_texts:
                    data = real.read_bytes()
                    text, eol = _decode(data, given)
                    new_texts[real] = (text, eol, data)
                text, eol, data = new_texts[real]
                count = text.count(search)
                if count != 1:
                    raise Refused("patch", f"a SEARCH block matches {count} times in {given} (must be once)")
                new_texts[real] = (text.replace(search, replace, 1), eol, data)
            return {path: text.replace("\n", eol).encode() for path, (text, eol, _) in new_texts.items()}
        if "@@" in patch and ("--- " in patch or "+++ " in patch):
            import unidiff

            try:
                patch_set = unidiff.PatchSet(patch.replace("\r\n", "\n"))
            except unidiff.UnidiffParseError as exc:
                raise Refused("patch", f"not a valid unified diff: {exc}") from None
            changes: dict[Path, bytes] = {}
            for patched in patch_set:
                if (
                    patched.is_added_file
                    or patched.is_removed_file
                    or (
                        patched.source_file != patched.target_file
                        and (patched.source_file.removeprefix("a/") != patched.target_file.removeprefix("b/"))
                    )
                ):
                    raise Refused("patch", "auto-dev never creates, deletes or renames files")
                real = self.check_path(patched.path)
                if real in changes:
                    raise Refused("patch", f"{patched.path} appears twice in the diff")
                text, eol = _decode(real.read_bytes(), patched.path)
                changes[real] = _apply_unified(patched, text).replace("\n", eol).encode()
            if not changes:
                raise Refused("patch", "the diff changes no file")
            return changes
        raise Refused("patch", "neither search/replace blocks nor a unified diff")

    def _lint_codes(self, relative: str, source: bytes) -> Counter[str]:
        try:
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ruff",
                    "check",
                    "--no-cache",
                    "--output-format",
                    "json",
                    "--stdin-filename",
                    relative,
                    "-",
                ],
                input=source,
                cwd=self.root,
                capture_output=True,
                timeout=120,
                check=False,
            )
            findings = json.loads(run.stdout or b"[]")
        except (OSError, subprocess.TimeoutExpired, ValueError):
            raise Refused("lint", "ruff could not run (auto-dev needs it: the `test` extra)") from None
        if run.returncode not in (0, 1):
            raise Refused("lint", f"ruff failed (exit {run.returncode})")
        return Counter(str(f.get("code") or "syntax") for f in findings)

    def check_sources(self, changes: dict[Path, bytes]) -> None:
        for path, new in changes.items():
            if path.suffix != ".py":
                continue
            relative = path.relative_to(self.root).as_posix()
            try:
                compile(new, relative, "exec", dont_inherit=True)
            except (SyntaxError, ValueError) as exc:
                raise Refused("compile", f"{relative} would not compile: {type(exc).__name__}") from None
            before, after = self._lint_codes(relative, path.read_bytes()), self._lint_codes(relative, new)
            new_errors = after - before
            if new_errors:
                raise Refused("lint", f"{relative} gains lint errors: {dict(new_errors)}")

    # -- backup and rollback -------------------------------------------------------------------
    def backup(self, attempt_dir: Path, paths: list[Path]) -> dict[str, dict[str, object]]:
        files_dir = attempt_dir / "files"
        files_dir.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, dict[str, object]] = {}
        for path in paths:
            relative = path.relative_to(self.root).as_posix()
            data = path.read_bytes()
            saved = files_dir / relative
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_bytes(data)
            manifest[relative] = {
                "mode": path.stat().st_mode & 0o7777,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
        (attempt_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return manifest

    def restore(self, attempt_dir: Path) -> None:
        """Put every backed-up file back byte for byte, with its mode; verified by hash."""
        manifest = json.loads((attempt_dir / "manifest.json").read_text())
        for relative, meta in manifest.items():
            data = (attempt_dir / "files" / relative).read_bytes()
            target = self.root / relative
            with open(target, "wb") as handle:  # same inode: links and ownership stay
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(target, int(meta["mode"]))
            if hashlib.sha256(target.read_bytes()).hexdigest() != meta["sha256"]:
                raise RuntimeError(f"restore of {relative} did not verify")

    def run_tests(self) -> tuple[int, str]:
        argv = shlex.split(self.test_command)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        process = subprocess.Popen(
            argv,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=self.test_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            return -1, f"timed out after {self.test_timeout:g} s\n" + output.decode(errors="replace")[
                -OUTPUT_TAIL:
            ]
        return process.returncode, output.decode(errors="replace")[-OUTPUT_TAIL:]

    # -- one attempt -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def attempt(self, suggestion: FixSuggestion, analysis_id: int | None = None) -> AttemptOutcome:
        """Try to apply `suggestion`; the outcome says how far it got. Never raises for a refusal."""
        attempt_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        attempt_dir = self.work_dir / "backups" / attempt_id
        outcome = AttemptOutcome(attempt_id, False, "gate", "", backup_dir=str(attempt_dir))
        with self._exclusive():
            attempt_dir.mkdir(parents=True, exist_ok=True)
            changes: dict[Path, bytes] = {}
            written = False
            try:
                if suggestion.risk != "low":
                    raise Refused("gate", f"risk is {suggestion.risk}, auto-dev applies low only")
                if not suggestion.confidence > self.min_confidence:
                    raise Refused("gate", f"confidence {suggestion.confidence:g} <= {self.min_confidence:g}")
                if not suggestion.patch.strip():
                    raise Refused("gate", "no patch")
                changes = self.plan(suggestion.patch)
                outcome.files = sorted(p.relative_to(self.root).as_posix() for p in changes)
                self.backup(attempt_dir, sorted(changes))
                self.check_sources(changes)
                written = True
                for path, data in changes.items():
                    with open(path, "r+b") as handle:  # in place: mode and inode stay
                        handle.write(data)
                        handle.truncate()
                code, output = self.run_tests()
                outcome.test_returncode = code
                outcome.test_output_tail = self.redactor.redact(output)
                if code != 0:
                    raise Refused("tests", f"the test command failed (exit {code})")
                outcome.applied, outcome.stage, outcome.reason = True, "applied", "tests passed"
            except Refused as refused:
                outcome.stage, outcome.reason = refused.stage, refused.reason
            except Exception as exc:  # an unexpected failure is a refusal too, never a half-applied patch
                outcome.stage, outcome.reason = "error", f"{type(exc).__name__}"
            finally:
                if not outcome.applied:
                    if not (attempt_dir / "manifest.json").exists():
                        self.backup(attempt_dir, [])
                    if written:
                        self.restore(attempt_dir)
                        outcome.rolled_back = True
                self._log(outcome, analysis_id)
        return outcome

    def _log(self, outcome: AttemptOutcome, analysis_id: int | None) -> None:
        entry = {"event": "autodev_attempt", "analysis_id": analysis_id, **outcome.to_dict()}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
