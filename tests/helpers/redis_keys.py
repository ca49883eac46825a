"""Deleting one test's keys (every service key lives under its prefix)."""

from __future__ import annotations

import redis


def delete_prefix(redis_url: str, prefix: str) -> None:
    """SCAN MATCH prefix* + UNLINK in chunks; never FLUSHALL (docs/design/style.md 6)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i : i + 500])
    finally:
        client.close()
