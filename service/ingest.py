"""Redis Streams ingestion (docs/design/serving.md 1-2): consumer group reads -> windows -> scores
-> commits.

One loop per replica, sequential by design: each turn reads one batch over every owned stream,
feeds it to the per-furnace window assemblers, scores and commits the windows it closed, then
`XACK`s it (service/reader.py). The batch is the bound on in-flight work, and a backlog stays in
Redis. Between reads, on their own schedules, the loop renews the shard lease and discovers the
shard's furnaces (service/lease.py), adopts new ones by rebuilding their buffers from history,
and takes over entries abandoned by consumers that died (service/recovery.py).

The loop reads only while this replica holds its shard lease, and rewrites `shard:layout` with
each renewal when it is gone (a flushed or restarted Redis). A Redis outage drops the
in-memory state and the loop rebuilds it once Redis answers again; a stream that lost its
consumer group (NOGROUP: deleted, or the group destroyed) gets the group back on the next
turn; any other error ends the loop (the process exits, docs/design/serving.md 5.3).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.alerting import AlertPolicy
from service.detection import Detection
from service.engine import Engine
from service.entries import as_text
from service.lease import ShardLease, owned_furnaces
from service.metrics import Metrics
from service.reader import StreamReader
from service.recovery import Recovery
from service.settings import Settings
from service.store import GROUP, CommitResult, Keys
from service.types import Window

logger = logging.getLogger(__name__)


@dataclass
class ConsumerStatus:
    last_loop: float = 0.0  # time.monotonic() of the last completed loop
    lease_held: bool = False
    running: bool = False
    redis_ok: bool = False
    error: str | None = None  # the last infrastructure error (cleared by a good loop)
    streams: int = 0
    furnaces: set[str] = field(default_factory=set)


_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class StreamConsumer:
    """The replica's reader: owned furnaces' current and camera streams under one group.

    Composed of `lease` (shard layout and lease), `streams` (the read loop's batch path and
    its in-memory state) and `recovery` (rebuild from history, XAUTOCLAIM, consumer pruning).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Callable[[], Engine],
        metrics: Metrics,
        score: Callable[[list[Window]], Awaitable[list[Detection]]],
        *,
        record: Callable[[Detection, CommitResult | None, str], None],
        policy: Callable[[], AlertPolicy],
        group_start_id: str = "$",
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.engine = engine
        self.metrics = metrics
        self.consumer = f"shard-{settings.shard_index}"
        self.instance = uuid.uuid4().hex
        self.status = ConsumerStatus()
        url = settings.redis_url
        # docs/design/serving.md 1.2: the blocking reader's socket timeout exceeds BLOCK by a
        # margin.
        name = f"sentinel-{self.consumer}-{self.instance[:12]}"  # CLIENT LIST shows who is who
        self.reader = aioredis.Redis.from_url(
            url,
            socket_timeout=settings.block_ms / 1000.0 + 10.0,
            client_name=f"{name}-reader",
            **({} if url.startswith("unix:") else {"socket_keepalive": True}),  # TCP only
        )
        self.client = aioredis.Redis.from_url(url, socket_timeout=10.0, client_name=name)
        self.lease = ShardLease(settings, self.keys, self.instance)
        self.streams = StreamReader(
            settings,
            self.keys,
            self.consumer,
            client=self.client,
            blocking=self.reader,
            engine=engine,
            metrics=metrics,
            score=score,
            record=record,
            policy=policy,
        )
        self.recovery = Recovery(
            settings,
            self.keys,
            self.consumer,
            group_start_id=group_start_id,
            process=self.streams.process,
            dead=self.streams.dead_letter,
        )
        self._stop = asyncio.Event()
        self._next_discovery = 0.0
        self._next_claim = 0.0
        self._next_lag = 0.0
        self._next_lease = 0.0
        self._lost_group = False  # a NOGROUP reply: recreate groups on the next turn

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Check the shard layout.

        Raises:
            RuntimeError: the shard layout in Redis differs from FURNACE_SHARD_COUNT (the
                replica must not start). An unreachable Redis is not an error here: the loop
                retries, and /readyz reports it.
        """
        try:
            await self.lease.check_layout(self.client)
        except _REDIS_DOWN as exc:
            self.status.error = f"redis unreachable: {exc}"
            logger.warning("Redis at startup: %s; retrying in the read loop", exc)

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        """Release the shard lease (when held) and close both connections."""
        if self.lease.held:
            try:
                await self.lease.release(self.client)
            except _REDIS_DOWN as exc:
                logger.warning("could not release the shard lease: %s", exc)
            self.lease.held = self.status.lease_held = False
        for c in (self.reader, self.client):
            await c.aclose()

    async def run(self) -> None:
        """The read loop; returns after stop(). Redis outages are retried (the in-memory state
        is dropped and rebuilt from the streams); other errors propagate (the caller exits)."""
        self.status.running = True
        backoff = 0.2
        try:
            while not self._stop.is_set():
                try:
                    await self._iteration()
                except ResponseError as exc:
                    # NOGROUP, or a blocked read's "UNBLOCKED the stream key no longer exists"
                    if "NOGROUP" not in str(exc) and "no longer exists" not in str(exc):
                        raise
                    logger.warning("stream loop: %s; recreating the consumer group", exc)
                    self._lost_group = True
                    continue
                except _REDIS_DOWN as exc:
                    self.status.redis_ok = False
                    self.status.error = f"redis: {exc!r}"[:300]
                    logger.warning("stream loop: %r; retrying in %.1f s", exc, backoff)
                    self._forget()
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
                self.status.redis_ok = True
                self.status.error = None
                self.status.last_loop = time.monotonic()
        finally:
            self.status.running = False

    async def _iteration(self) -> None:
        if self._lost_group:
            await self.streams.restore_groups()
            self._lost_group = False
        now = time.monotonic()
        if not self.lease.layout_ok or now >= self._next_lease:
            # Every renewal: a Redis that came back empty gets the layout again
            await self.lease.check_layout(self.client)
        if now >= self._next_lease:
            self.status.lease_held = await self.lease.renew(self.client)
            self._next_lease = now + self.settings.lease_ttl_ms / 3000.0
        if not self.status.lease_held:
            await self._sleep(1.0)
            return
        if now >= self._next_discovery:
            await self.discover()
            self._next_discovery = now + self.settings.discovery_interval_seconds
        if now >= self._next_claim:
            await self.recovery.claim_abandoned(self.client, list(self.streams.cursors))
            self._next_claim = now + self.settings.claim_interval_seconds
        if now >= self._next_lag:
            await self._export_lag()
            self._next_lag = now + 5.0
        if self.streams.cursors:
            await self.streams.read_once()
        else:
            await self._sleep(self.settings.block_ms / 1000.0)

    def _forget(self) -> None:
        """Drop what lives in memory (after a Redis error mid-batch nothing half-done may be
        trusted): cursors restart at own pending entries, buffers are rebuilt from history."""
        self.streams.forget()
        self._next_discovery = self._next_lease = 0.0

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    # ----------------------------------------------------------------- furnaces
    async def discover(self) -> None:
        """Adopt every furnace of this shard not read yet (service/lease.py says which)."""
        for furnace_id in await owned_furnaces(self.client, self.keys, self.settings):
            if furnace_id not in self.streams.assemblers:
                await self._adopt(furnace_id)
        furnaces = {c.furnace_id for c in self.streams.cursors.values()}
        self.status.streams = len(self.streams.cursors)
        self.status.furnaces = furnaces
        self.metrics.register_furnaces(sorted(furnaces))

    async def _adopt(self, furnace_id: str) -> None:
        """Start reading a furnace: rebuild its window buffer from both streams' history,
        commit any window that history closes after the last committed one, and start each
        stream with its own pending entries (docs/design/serving.md 2.3). With memory heads,
        the furnace's code history is rebuilt from its stored detections before its first
        window is scored (`Runtime.prime_memory`); with per-furnace adaptation, its score
        history likewise."""
        engine = self.engine()
        for history in (engine.history, engine.adapter):
            if history is not None:  # rebuilt from stored detections before it scores
                history.reprime(furnace_id)
        assembler = await self.recovery.adopt(self.client, furnace_id, engine.manifest.window)
        windows = self.streams.add(furnace_id, assembler)
        if windows:  # closed by entries acked before a commit finished: commit them now
            await self.streams.score_and_commit(windows)

    async def _export_lag(self) -> None:
        for key, cursor in self.streams.cursors.items():
            try:
                groups = await self.client.xinfo_groups(key)
            except ResponseError:
                continue
            for info in groups:
                if as_text(info["name"]) != GROUP:
                    continue
                lag = info.get("lag")
                f, m = cursor.furnace_id, cursor.modality
                self.metrics.set_stream_lag(
                    furnace_id=f, modality=m, lag=None if lag is None else int(lag)
                )
                self.metrics.set_stream_pending(
                    furnace_id=f, modality=m, pending=int(info.get("pending", 0))
                )
