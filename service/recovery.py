"""Recovery of a consumer's streams (docs/design/serving.md 1.3, 2.3): rebuilding window buffers
from history, taking over abandoned entries, removing dead consumer names.

On adopting a furnace (a start, or a Redis outage that dropped the in-memory state) its
buffer is rebuilt from both streams' history before the group's oldest pending entry (any
consumer's; XREVRANGE), resuming after the last committed window; the consumer then commits
the windows that history closes and reads its own pending entries (`0`), then new ones (`>`).
A periodic XAUTOCLAIM takes over entries left pending by consumers that died, claiming every
stream of a round into one batch, and removes consumer names that hold nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.entries import Batch, PoisonEntryError, arrival_time, as_text, parse_autoclaim
from service.reader import feed_entry
from service.settings import Settings
from service.store import GROUP, Keys, load_state
from service.types import MODALITIES, WindowSpec
from service.windows import WindowAssembler

logger = logging.getLogger(__name__)

CLAIM_COUNT = 100  # entries per XAUTOCLAIM call and stream

# process(batch, recheck_deliveries, full): feed, score, commit and XACK a batch
ProcessBatch = Callable[[Batch, bool, set[str]], Awaitable[None]]
# dead(key, entry_id, reason, deliveries, detail): dead-letter one entry (the caller XACKs)
DeadLetter = Callable[[str, str, str, int, str], Awaitable[None]]


class Recovery:
    """Rebuild, takeover and clean-up for one consumer (`consumer`, in group `GROUP`).

    `process` and `dead` are the consumer's: claimed entries go through the same
    feed-score-commit-ack path as read ones.
    """

    def __init__(
        self,
        settings: Settings,
        keys: Keys,
        consumer: str,
        *,
        group_start_id: str,
        process: ProcessBatch,
        dead: DeadLetter,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.consumer = consumer
        self.group_start_id = group_start_id
        self.process = process
        self.dead = dead

    # ----------------------------------------------------------------- history
    async def adopt(
        self, client: aioredis.Redis, furnace_id: str, spec: WindowSpec
    ) -> WindowAssembler:
        """Create the furnace's groups and rebuild its window buffer from both streams'
        history, resuming after the last committed window (docs/design/serving.md 2.3). The windows
        that history closes are left in the assembler for the caller to commit.
        """
        # A furnace in backfill mode is read from its first entry: its streams carry archives
        start = "0" if self.settings.backfills(furnace_id) else self.group_start_id
        for modality in MODALITIES:
            key = self.keys.stream(furnace_id, modality)
            try:
                await client.xgroup_create(key, GROUP, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        state = await load_state(client, self.keys, furnace_id)
        resume = None
        if state.get("last_window_end"):
            # An HTTP window may end off the hop grid; no grid window at or before it is new.
            last = float(state["last_window_end"])
            resume = math.floor(last / spec.hop_seconds + 1e-6) * spec.hop_seconds
        assembler = WindowAssembler(
            furnace_id,
            spec,
            grace_seconds=self.settings.grace_seconds,
            staleness_seconds=self.settings.staleness_seconds,
            last_closed_end=resume,
        )
        for modality in MODALITIES:
            key = self.keys.stream(furnace_id, modality)
            await self._rebuild(client, assembler, key, modality)
        return assembler

    async def _rebuild(
        self, client: aioredis.Redis, assembler: WindowAssembler, key: str, modality: str
    ) -> None:
        """Feed the history before the group's oldest pending entry (any consumer's: those are
        re-read or claimed later), or up to the group's last delivered id when nothing is
        pending: every entry fed here was acked, so the windows it closed were committed."""
        pending = await client.xpending_range(key, GROUP, min="-", max="+", count=1)
        if pending:
            top = f"({as_text(pending[0]['message_id'])}"
        else:
            top = ""
            for info in await client.xinfo_groups(key):
                if as_text(info["name"]) == GROUP:
                    top = as_text(info["last-delivered-id"])
            if top in ("", "0-0"):
                return
        spec = assembler.spec
        rate = spec.rate_hz if modality == "current" else spec.camera_fps
        count = int((assembler.history_seconds + 2 * spec.hop_seconds) * rate * 1.5) + 16
        entries: Any = await client.xrevrange(key, max=top, min="-", count=count)
        now = time.time()
        pixels = self.settings.max_image_pixels
        ahead = self.settings.max_future_skew_seconds
        for entry_id, fields in reversed(entries):
            arrival = arrival_time(as_text(entry_id), now)
            try:
                feed_entry(
                    assembler, modality, fields, arrival, max_image_pixels=pixels, max_ahead=ahead
                )
            except PoisonEntryError:
                continue  # it went to the DLQ when it was first read

    # ----------------------------------------------------------------- takeover
    async def claim_abandoned(self, client: aioredis.Redis, streams: list[str]) -> int:
        """XAUTOCLAIM entries idle past claim_min_idle_ms (their consumer died) and process
        them, then prune idle consumer names. Each round claims up to 100 entries of every
        stream and processes them as one batch, so a furnace's current and frames are fed
        together (in time order). Returns how many entries were claimed."""
        cursors = dict.fromkeys(streams, "0-0")
        claimed = 0
        while cursors:
            batch: Batch = []
            full: set[str] = set()
            for key in list(cursors):
                reply = await client.execute_command(  # type: ignore[no-untyped-call]
                    "XAUTOCLAIM",
                    key,
                    GROUP,
                    self.consumer,
                    self.settings.claim_min_idle_ms,
                    cursors[key],
                    "COUNT",
                    CLAIM_COUNT,
                )
                nxt, entries, deleted = parse_autoclaim(reply)
                for entry_id in deleted:
                    await self.dead(key, entry_id, "trimmed", 0, "trimmed while pending")
                if deleted:
                    await client.xack(key, GROUP, *deleted)
                batch.extend((key, i, f) for i, f in entries)
                if len(entries) >= CLAIM_COUNT:
                    full.add(key)
                if nxt == "0-0":
                    del cursors[key]
                else:
                    cursors[key] = nxt
            if batch:
                claimed += len(batch)
                logger.info("claimed %d abandoned entries", len(batch))
                await self.process(batch, True, full)
        await self.prune_consumers(client, streams)
        return claimed

    async def prune_consumers(self, client: aioredis.Redis, streams: list[str]) -> int:
        """XGROUP DELCONSUMER consumer names of the streams that hold nothing pending and were
        idle past claim_min_idle_ms (a crashed or retired shard; docs/design/serving.md 1.3). A live
        consumer pruned by mistake is recreated by its next XREADGROUP; nothing is lost
        because only names without pending entries go. Returns how many were removed."""
        removed = 0
        for key in streams:
            for row in await client.xinfo_consumers(key, GROUP):
                name = as_text(row["name"])
                if name == self.consumer or int(row["pending"]):
                    continue
                # `idle`: since the last attempted read; a live consumer reads every BLOCK
                if int(row["idle"]) > self.settings.claim_min_idle_ms:
                    await client.xgroup_delconsumer(key, GROUP, name)
                    removed += 1
                    logger.info("removed idle consumer %s of %s", name, key)
        return removed
