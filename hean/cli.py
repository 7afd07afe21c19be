"""The `hean` command line: `hean up` runs the whole system; `hean token` prints the token."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from hean.config import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        names = ", ".join(str(p) for p in first["loc"])
        raise SystemExit(f"hean: invalid configuration: {names}: {first['msg']}") from None


def cmd_up(_: argparse.Namespace) -> int:
    from hean.launcher import Launcher
    from hean.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level)
    return Launcher(settings).run()


def cmd_token(_: argparse.Namespace) -> int:
    from hean.auth import ensure_token

    print(ensure_token(_settings()))
    return 0


def cmd_processes(_: argparse.Namespace) -> int:
    from hean.launcher import describe_processes

    print("\n".join(describe_processes()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hean", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start Redis (if needed) and every HEAN process; Ctrl-C stops all")
    sub.add_parser("token", help="print the control token (generated on first use)")
    sub.add_parser("processes", help="list the processes `hean up` supervises")
    args = parser.parse_args(argv)
    handler = {"up": cmd_up, "token": cmd_token, "processes": cmd_processes}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
