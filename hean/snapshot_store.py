"""How the engine's snapshot is kept in Redis (`ENGINE_SNAPSHOT_KEY`, a hash: `data`, `encoding`,
`log_id`, `paused`), read by the engine worker (workers/shard.py, which writes it) and by
`hean downgrade-snapshot`."""

from __future__ import annotations

import zlib
from typing import Any, cast

from hean.engine import snapshot_as_format_1
from hean.redis_client import text
from hean.topology import ENGINE_SNAPSHOT_KEY


def stored_snapshot_data(stored: dict[bytes, bytes]) -> bytes:
    """The engine snapshot in a stored hash: compressed, or as written before compression."""
    encoding = stored.get(b"encoding")
    if encoding is None:
        return stored[b"data"]
    if encoding != b"zlib":
        raise ValueError(f"snapshot: unknown encoding {encoding!r}")
    try:
        return zlib.decompress(stored[b"data"])
    except zlib.error as exc:
        raise ValueError(f"snapshot: not zlib data ({exc})") from exc


def downgrade_snapshot(client: Any) -> tuple[str, int] | None:
    """Rewrite the stored engine snapshot as versions before snapshot format 2 read it: format 1
    (hean.engine.snapshot_as_format_1), uncompressed, without `encoding`. Its log id stays. An
    engine worker that takes a snapshot afterwards writes format 2 again: run this with no
    commands flowing, just before stopping the system to roll back. Returns (log id, bytes), or
    None when no snapshot is stored; ValueError if the stored one cannot be read (unchanged);
    redis.WatchError if a snapshot was written meanwhile (unchanged: run it again)."""
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(ENGINE_SNAPSHOT_KEY)
        stored = cast(dict[bytes, bytes], pipe.hgetall(ENGINE_SNAPSHOT_KEY))
        if not stored.get(b"data"):
            return None
        old = snapshot_as_format_1(stored_snapshot_data(stored))
        pipe.multi()
        pipe.hset(ENGINE_SNAPSHOT_KEY, b"data", old)
        pipe.hdel(ENGINE_SNAPSHOT_KEY, b"encoding")
        pipe.execute()
    return text(stored[b"log_id"]), len(old)
