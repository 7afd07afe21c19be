"""A real PostgreSQL server for the tests: Debian's binaries (`make postgres` installs the
`postgresql` package), a cluster made by initdb in a temporary directory, started on a free
port for the test session and removed after it.

PostgreSQL refuses to run as root: under root the server runs as the `postgres` user (the
package creates it), else as `nobody`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

INSTALL_HINT = (
    "the PostgreSQL tests need Debian's `postgresql` package (initdb and postgres under "
    "/usr/lib/postgresql/*/bin): run `make postgres` (apt-get as root or through sudo -n)"
)


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parent.parent.name)
    )
    return Path(found[-1]).parent if found else None


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no `postgres` or `nobody` user to run PostgreSQL as")


class PostgresServer:
    """initdb + postgres on 127.0.0.1:`port` (trust authentication for user `hean`)."""

    def __init__(self, port: int) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(INSTALL_HINT)
        self.bin_dir, self.port = bin_dir, port
        self.root = Path(tempfile.mkdtemp(prefix="hean-postgres-"))
        self.data = self.root / "data"
        self.user = _run_as()
        self.process: subprocess.Popen[bytes] | None = None

    def _demote(self) -> None:
        if self.user is not None:
            os.setgid(self.user.pw_gid)
            os.setgroups([])
            os.setuid(self.user.pw_uid)

    def _run(self, *argv: str) -> None:
        subprocess.run(
            argv, check=True, capture_output=True, preexec_fn=self._demote, cwd=self.root, timeout=120
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://hean@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "hean", "--auth=trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self._log = open(self.root / "postgres.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                # a test cluster: speed over crash safety
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._demote,
            cwd=self.root,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'postgres.log').read_text()[-2000:]}")
            probe = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "hean"],
                capture_output=True,
            )
            if probe.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError("postgres did not accept connections within 60 s")

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=hean dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server and its backends stopped (SIGSTOP) inside the block: connections stay open,
        nothing answers, as when a database hangs; continued (SIGCONT) after it."""
        assert self.process is not None
        processes = [psutil.Process(self.process.pid)]
        processes += processes[0].children(recursive=True)
        for process in processes:
            process.suspend()
        try:
            yield
        finally:
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    process.resume()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: clients are cut off
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)
