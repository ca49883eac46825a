"""Shard ownership (docs/design/serving.md 2.1): the agreed shard count, this replica's shard
lease, and which furnaces it reads.

Every replica must agree on `FURNACE_SHARD_COUNT`: the first one writes it to `shard:layout`
and a replica with another count refuses to start. A replica reads only while it holds the
lease `shard:{i}-of-{n}` (a key with a TTL, renewed a few times per TTL; a second replica with
the same index waits until the first one's lease expires). Its furnaces are the configured
fleet plus every furnace with an input stream, filtered by the rendezvous hash
(`service.shard.owner`).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from service.entries import as_text
from service.settings import Settings
from service.shard import owner, validate_furnace_id
from service.store import Keys
from service.types import MODALITIES

logger = logging.getLogger(__name__)


class ShardLease:
    """This replica's shard: the layout check and the lease on `shard:{i}-of-{n}`.

    `instance` (unique per process) is the lease value, so only its holder renews or
    releases it.
    """

    def __init__(self, settings: Settings, keys: Keys, instance: str) -> None:
        self.settings = settings
        self.keys = keys
        self.instance = instance
        self.held = False
        self.layout_ok = False

    @property
    def key(self) -> str:
        return self.keys.lease(self.settings.shard_index, self.settings.shard_count)

    async def check_layout(self, client: aioredis.Redis) -> None:
        """Record the shard count in Redis when none is, else compare with it (at start and at
        every lease renewal, so a Redis that lost its keys gets the layout back).

        Raises:
            RuntimeError: Redis holds another shard count (the replica must not run).
        """
        count = str(self.settings.shard_count)
        if await client.set(self.keys.layout, count, nx=True) and self.layout_ok:
            logger.warning(
                "%s was gone (Redis flushed or restarted empty); rewrote it: %s shards",
                self.keys.layout,
                count,
            )
        stored = as_text(await client.get(self.keys.layout))
        if stored != count:
            msg = (
                f"shard layout mismatch: Redis says {stored} shards ({self.keys.layout}), this "
                f"replica has FURNACE_SHARD_COUNT={count}; restart every replica with one count "
                f"(or delete {self.keys.layout} when resizing the whole fleet)"
            )
            raise RuntimeError(msg)
        self.layout_ok = True

    async def renew(self, client: aioredis.Redis) -> bool:
        """Take the lease when it is free, extend it when this instance holds it; whether
        this instance holds it now."""
        ttl = self.settings.lease_ttl_ms
        held = bool(await client.eval(_ACQUIRE, 1, self.key, self.instance, ttl))
        if held != self.held:
            logger.info("shard lease %s: %s", self.key, "held" if held else "NOT held")
        self.held = held
        return held

    async def release(self, client: aioredis.Redis) -> None:
        """Delete the lease if this instance holds it (a successor need not wait the TTL)."""
        if self.held:
            await client.eval(_RELEASE, 1, self.key, self.instance)
            self.held = False


async def owned_furnaces(client: aioredis.Redis, keys: Keys, settings: Settings) -> list[str]:
    """The furnaces this shard reads, sorted: the configured fleet plus every furnace with an
    input stream, valid ids only, filtered by shard."""
    found = set(settings.furnaces)
    for modality in MODALITIES:
        pattern = f"{_glob_escape(keys.prefix)}furnace:*:{modality}"
        async for key in client.scan_iter(match=pattern, count=500, _type="stream"):
            parsed = keys.parse_stream(as_text(key))
            if parsed is not None:
                found.add(parsed[0])
    owned = []
    for furnace_id in sorted(found):
        try:
            validate_furnace_id(furnace_id)
        except ValueError:
            logger.warning("ignoring stream of invalid furnace id %r", furnace_id[:80])
            continue
        if owner(furnace_id, settings.shard_count) == settings.shard_index:
            owned.append(furnace_id)
    return owned


def _glob_escape(text: str) -> str:
    """`text` as a literal inside a SCAN MATCH pattern."""
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)


_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
