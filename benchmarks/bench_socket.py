"""One Redis round trip over TCP on 127.0.0.1 against the same over a Unix socket, in turns, in
one run: the CPU each costs the client (this process, redis-py) and the server (valkey-server,
read from /proc), per round trip, without an append-only file and with `appendfsync always` (as
`hean up` runs its private Redis).

HEAN's processes reach the private Redis over TCP. Every order crosses to Redis about once
(the web's reservation, a share of the engine worker's take and commit, the results' pub/sub
message), so this tells what a Unix socket could save per order (README: "Where the CPU of an
order goes"). Prints microseconds per round trip, the median over the rounds. Never fails on
speed.

    .venv/bin/python benchmarks/bench_socket.py [--rounds N] [--trips N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hean.redis_server import free_port, server_binary


def measure(fsync: str, rounds: int, trips: int) -> dict[str, tuple[float, float]]:
    """Per way (tcp, unix): median client and server CPU us per SET round trip."""
    with tempfile.TemporaryDirectory() as data:
        port, path = free_port(), f"{data}/redis.sock"
        args = [
            str(server_binary()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            path,
            "--unixsocketperm",
            "700",
            "--dir",
            data,
            "--save",
            "",
        ]
        if fsync != "off":
            args += ["--appendonly", "yes", "--appendfsync", fsync]
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            ways = {"tcp": redis.Redis(port=port), "unix": redis.Redis(unix_socket_path=path)}
            deadline = time.monotonic() + 10
            while True:
                try:
                    for client in ways.values():
                        client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            process = psutil.Process(server.pid)
            got: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
            for _ in range(rounds):
                for name, client in ways.items():
                    before, start = process.cpu_times(), time.process_time()
                    for trip in range(trips):
                        client.set("key", trip)
                    after, end = process.cpu_times(), time.process_time()
                    server_s = after.user + after.system - before.user - before.system
                    got[name].append(((end - start) / trips * 1e6, server_s / trips * 1e6))
            for client in ways.values():
                client.close()
            return {
                name: (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
                for name, rows in got.items()
            }
        finally:
            server.terminate()
            server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--trips", type=int, default=5_000)
    args = parser.parse_args()
    print(f"CPU us per SET round trip, median of {args.rounds} rounds of {args.trips:,}, in turns:")
    for fsync in ("off", "always"):
        got = measure(fsync, args.rounds, args.trips)
        (tcp_client, tcp_server), (unix_client, unix_server) = got["tcp"], got["unix"]
        print(
            f"  AOF {fsync:6s}  tcp: client {tcp_client:6.1f} server {tcp_server:6.1f}   "
            f"unix: client {unix_client:6.1f} server {unix_server:6.1f}   "
            f"unix / tcp: client {unix_client / tcp_client:.2f}x server {unix_server / tcp_server:.2f}x"
        )


if __name__ == "__main__":
    main()
