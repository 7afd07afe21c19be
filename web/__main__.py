"""Entry point of the web process: `python -m web` (eventlet, monkey-patched first)."""

import os

import eventlet

eventlet.monkey_patch()
# psycopg 3 waits for PostgreSQL in C (wait_c) unless it sees gevent: under eventlet that wait
# blocked the whole process, so a database that hung froze every connection, health checks
# included. wait_select goes through the select eventlet patched: only the waiting green
# thread waits. Read when psycopg is first imported, after this line.
os.environ.setdefault("PSYCOPG_WAIT_FUNC", "wait_select")

from web.server import main  # noqa: E402  (must come after monkey_patch)

main()
