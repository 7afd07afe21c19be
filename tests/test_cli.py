"""The `hean` commands that talk to Redis, when none answers: without REDIS_URL they use the
private server of a running `hean up`, and say so rather than only "connection refused"."""

from __future__ import annotations

from pathlib import Path

import pytest

from hean import cli
from hean.redis_server import free_port


def test_without_a_running_hean_up_the_commands_say_to_start_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("HEAN_HOME", str(home))
    # never started here: the default URL (127.0.0.1:6379), where nothing runs on this machine
    assert cli.main(["downgrade-snapshot"]) == 2
    err = capsys.readouterr().err
    assert "the engine snapshot was not rewritten: ConnectionError" in err
    assert f"(no REDIS_URL, and no `hean up` in HEAN_HOME={home}: start it, or set REDIS_URL)" in err

    # started, then killed (its private server's URL still recorded): nothing answers there
    home.mkdir(exist_ok=True)
    (home / "redis.url").write_text(f"redis://127.0.0.1:{free_port()}/0\n")
    assert cli.main(["reconcile"]) == 2
    err = capsys.readouterr().err
    assert "cannot reconcile: ConnectionError" in err
    assert f"(the private Redis of `hean up` in HEAN_HOME={home} does not answer: is it running?)" in err

    # a REDIS_URL that does not answer: the user chose it, the error is Redis's own
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert cli.main(["downgrade-snapshot"]) == 2
    err = capsys.readouterr().err
    assert "ConnectionError" in err and "hean up" not in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--from", "yesterday"], "--from/--to: must be epoch seconds or an ISO 8601 time, got 'yesterday'"),
        (["--to", "nan"], "--from/--to: must be a finite time, got 'nan'"),
        (["--from", "inf"], "--from/--to: must be a finite time, got 'inf'"),
    ],
)
def test_reconcile_refuses_a_time_it_cannot_read_before_it_connects(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["reconcile", *argv]) == 2
    assert f"hean: {said}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["token", "analyses", "reconcile"])
def test_a_home_under_a_file_is_named_in_one_line(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    home = tmp_path / "a-file" / "hean"
    for name in ("REDIS_URL", "DATABASE_URL", "HEAN_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HEAN_HOME", str(home))
    assert cli.main([command]) == 1
    assert capsys.readouterr().err == f"hean: {command}: {home}: Not a directory\n"


def test_read_only_commands_create_no_database_where_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    """A missing SQLite file is a wrong HEAN_HOME or DATABASE_URL: said so, not created empty."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("HEAN_HOME", str(home))
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert cli.main(["analyses"]) == 1
    assert f"hean: no database at {home / 'hean.db'}: nothing analysed there" in capsys.readouterr().err
    assert cli.main(["reconcile"]) == 2
    assert f"hean: cannot reconcile: no database at {home / 'hean.db'}" in capsys.readouterr().err
    assert not (home / "hean.db").exists()
