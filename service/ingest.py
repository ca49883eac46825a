"""Redis Streams ingestion (SERVING.md 1-2): consumer group reads -> windows -> scores -> commits.

One loop per replica, sequential by design: read a batch (`XREADGROUP ... COUNT n`), feed the
per-furnace window assemblers by sensor timestamp, score every window the batch closed in one
ONNX run per modality (in the inference executor, off the event loop), commit each detection
idempotently (service/store.py), then `XACK` the whole batch. Nothing is acked before its
windows are committed; a crash replays the batch and the idempotency check drops what was
already committed. The batch is the bound on in-flight work, and a backlog stays in Redis.

Backlogs: a furnace's current and camera streams are read together, but after an outage one
can hold far older entries than the other (frames are trimmed sooner). While a stream's last
read was full (more entries wait), the furnace's windows close only up to the newest time read
from it, and a stream running ahead of it is not read further until it catches up.

Recovery: on start each furnace's buffer is rebuilt from both streams' history before the
group's oldest pending entry (any consumer's; XREVRANGE), and windows that history closes after
the last committed one are committed; own pending entries are re-read (`0`), then new ones
(`>`); a periodic XAUTOCLAIM takes over entries left pending by consumers that died, claiming
every stream of a round into one batch. Entries delivered `max_deliveries` times, and entries
that can never parse, go to the dead-letter stream. A Redis outage drops the in-memory state
and the loop rebuilds it once Redis answers again; any other error ends the loop (the process
exits, SERVING.md 5.3).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.alerting import AlertPolicy
from service.engine import Detection, Engine
from service.entries import (
    PoisonEntryError,
    as_text,
    field_bytes,
    id_order,
    parse_autoclaim,
    parse_current,
    parse_ts,
)
from service.images import ImageError, decode_image
from service.metrics import Metrics
from service.settings import Settings
from service.shard import owner, validate_furnace_id
from service.store import CommitResult, Keys, commit_detection, dead_letter, load_state
from service.types import Window
from service.windows import WindowAssembler

logger = logging.getLogger(__name__)

GROUP = "sentinel"
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # one encoded camera frame
CLAIM_COUNT = 100  # entries per XAUTOCLAIM call and stream


@dataclass
class StreamCursor:
    """Per input stream: where the next XREADGROUP starts ("0": own pending first), the
    newest sensor time fed from it, and whether its last read was full (more is waiting)."""

    furnace_id: str
    modality: str
    next_id: str = "0"
    newest: float = -math.inf
    more: bool = False


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
    """The replica's reader: owned furnaces' current and camera streams under one group."""

    def __init__(
        self,
        settings: Settings,
        engine: Callable[[], Engine],
        metrics: Metrics,
        score: Callable[[list[Window]], Awaitable[list[Detection]]],
        *,
        record: Callable[[Detection, CommitResult | None, str], None],
        policy: AlertPolicy,
        group_start_id: str = "$",
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.engine = engine
        self.metrics = metrics
        self.score = score
        self.record = record
        self.group_start_id = group_start_id
        self.consumer = f"shard-{settings.shard_index}"
        self.instance = uuid.uuid4().hex
        self.policy = policy
        self.status = ConsumerStatus()
        self.cursors: dict[str, StreamCursor] = {}
        self.assemblers: dict[str, WindowAssembler] = {}
        self._stop = asyncio.Event()
        self._reader: aioredis.Redis | None = None
        self._client: aioredis.Redis | None = None
        self._layout_ok = False
        self._next_discovery = 0.0
        self._next_claim = 0.0
        self._next_lag = 0.0
        self._next_lease = 0.0

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect and check the shard layout.

        Raises:
            RuntimeError: the shard layout in Redis differs from FURNACE_SHARD_COUNT (the
                replica must not start). An unreachable Redis is not an error here: the loop
                retries, and /readyz reports it.
        """
        url = self.settings.redis_url
        block_s = self.settings.block_ms / 1000.0
        # SERVING.md 1.2: the blocking reader's socket timeout exceeds BLOCK by a margin.
        name = f"sentinel-{self.consumer}-{self.instance[:12]}"  # CLIENT LIST shows who is who
        self._reader = aioredis.Redis.from_url(
            url,
            socket_timeout=block_s + 10.0,
            client_name=f"{name}-reader",
            **({} if url.startswith("unix:") else {"socket_keepalive": True}),  # TCP only
        )
        self._client = aioredis.Redis.from_url(url, socket_timeout=10.0, client_name=name)
        try:
            await self._check_layout()
        except _REDIS_DOWN as exc:
            self.status.error = f"redis unreachable: {exc}"
            logger.warning("Redis at startup: %s; retrying in the read loop", exc)

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        client = self._client
        if client is not None and self.status.lease_held:
            try:
                await client.eval(_RELEASE, 1, self._lease_key, self.instance)
            except _REDIS_DOWN as exc:
                logger.warning("could not release the shard lease: %s", exc)
            self.status.lease_held = False
        for c in (self._reader, self._client):
            if c is not None:
                await c.aclose()

    @property
    def client(self) -> aioredis.Redis:
        assert self._client is not None, "start() first"
        return self._client

    @property
    def reader(self) -> aioredis.Redis:
        assert self._reader is not None, "start() first"
        return self._reader

    @property
    def _lease_key(self) -> str:
        return self.keys.lease(self.settings.shard_index, self.settings.shard_count)

    async def run(self) -> None:
        """The read loop; returns after stop(). Redis outages are retried (the in-memory state
        is dropped and rebuilt from the streams); other errors propagate (the caller exits)."""
        self.status.running = True
        backoff = 0.2
        try:
            while not self._stop.is_set():
                try:
                    await self._iteration()
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
        if not self._layout_ok:
            await self._check_layout()
        now = time.monotonic()
        if now >= self._next_lease:
            await self._renew_lease()
            self._next_lease = now + self.settings.lease_ttl_ms / 3000.0
        if not self.status.lease_held:
            await self._sleep(1.0)
            return
        if now >= self._next_discovery:
            await self.discover()
            self._next_discovery = now + self.settings.discovery_interval_seconds
        if now >= self._next_claim:
            await self.claim_abandoned()
            self._next_claim = now + self.settings.claim_interval_seconds
        if now >= self._next_lag:
            await self._export_lag()
            self._next_lag = now + 5.0
        await self.read_once()

    def _forget(self) -> None:
        """Drop what lives in memory (after a Redis error mid-batch nothing half-done may be
        trusted): cursors restart at own pending entries, buffers are rebuilt from history."""
        self.cursors.clear()
        self.assemblers.clear()
        self._next_discovery = self._next_lease = 0.0

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    # ----------------------------------------------------------------- shards
    async def _check_layout(self) -> None:
        count = str(self.settings.shard_count)
        await self.client.set(self.keys.layout, count, nx=True)
        stored = as_text(await self.client.get(self.keys.layout))
        if stored != count:
            msg = (
                f"shard layout mismatch: Redis says {stored} shards ({self.keys.layout}), this "
                f"replica has FURNACE_SHARD_COUNT={count}; restart every replica with one count "
                f"(or delete {self.keys.layout} when resizing the whole fleet)"
            )
            raise RuntimeError(msg)
        self._layout_ok = True

    async def _renew_lease(self) -> None:
        ttl = self.settings.lease_ttl_ms
        held = await self.client.eval(_ACQUIRE, 1, self._lease_key, self.instance, ttl)
        if bool(held) != self.status.lease_held:
            logger.info("shard lease %s: %s", self._lease_key, "held" if held else "NOT held")
        self.status.lease_held = bool(held)

    # ----------------------------------------------------------------- discovery
    async def discover(self) -> None:
        """Own furnaces: the configured fleet plus discovered streams, filtered by shard."""
        found = set(self.settings.furnaces)
        for modality in ("current", "camera"):
            pattern = f"{_glob_escape(self.keys.prefix)}furnace:*:{modality}"
            async for key in self.client.scan_iter(match=pattern, count=500, _type="stream"):
                parsed = self.keys.parse_stream(as_text(key))
                if parsed is not None:
                    found.add(parsed[0])
        for furnace_id in sorted(found):
            try:
                validate_furnace_id(furnace_id)
            except ValueError:
                logger.warning("ignoring stream of invalid furnace id %r", furnace_id[:80])
                continue
            if owner(furnace_id, self.settings.shard_count) != self.settings.shard_index:
                continue
            if furnace_id not in self.assemblers:
                await self._adopt(furnace_id)
        self.status.streams = len(self.cursors)
        self.status.furnaces = {c.furnace_id for c in self.cursors.values()}
        self.metrics.register_furnaces(sorted(self.status.furnaces))

    async def _adopt(self, furnace_id: str) -> None:
        """Start reading a furnace: create the groups, rebuild the window buffer from both
        streams' history, commit any window that history closes after the last committed one,
        and start each stream with its own pending entries (SERVING.md 2.3)."""
        for modality in ("current", "camera"):
            key = self.keys.stream(furnace_id, modality)
            try:
                await self.client.xgroup_create(key, GROUP, id=self.group_start_id, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        state = await load_state(self.client, self.keys, furnace_id)
        spec = self.engine().manifest.window
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
        for modality in ("current", "camera"):
            await self._rebuild(assembler, self.keys.stream(furnace_id, modality), modality)
        windows = assembler.pop_closed()
        self.assemblers[furnace_id] = assembler
        for modality in ("current", "camera"):
            self.cursors[self.keys.stream(furnace_id, modality)] = StreamCursor(
                furnace_id, modality
            )
        if windows:  # closed by entries acked before a commit finished: commit them now
            await self.score_and_commit(windows)

    async def _rebuild(self, assembler: WindowAssembler, key: str, modality: str) -> None:
        """Feed the history before the group's oldest pending entry (any consumer's: those are
        re-read or claimed later), or up to the group's last delivered id when nothing is
        pending: every entry fed here was acked, so the windows it closed were committed."""
        pending = await self.client.xpending_range(key, GROUP, min="-", max="+", count=1)
        if pending:
            top = f"({as_text(pending[0]['message_id'])}"
        else:
            top = ""
            for info in await self.client.xinfo_groups(key):
                if as_text(info["name"]) == GROUP:
                    top = as_text(info["last-delivered-id"])
            if top in ("", "0-0"):
                return
        spec = assembler.spec
        rate = spec.rate_hz if modality == "current" else spec.camera_fps
        count = int((assembler.history_seconds + 2 * spec.hop_seconds) * rate * 1.5) + 16
        entries: Any = await self.client.xrevrange(key, max=top, min="-", count=count)
        now = time.time()
        for _, fields in reversed(entries):
            try:
                self._feed(assembler, modality, fields, now)
            except PoisonEntryError:
                continue  # it went to the DLQ when it was first read

    # ----------------------------------------------------------------- reading
    async def read_once(self) -> int:
        """One XREADGROUP over every owned stream, processed and acked. Returns entries read."""
        if not self.cursors:
            await self._sleep(self.settings.block_ms / 1000.0)
            return 0
        streams = {key: c.next_id for key, c in self.cursors.items() if not self._ahead(c)}
        reply: Any = await self.reader.xreadgroup(
            GROUP,
            self.consumer,
            streams=streams,  # type: ignore[arg-type]
            count=self.settings.read_count,
            block=self.settings.block_ms,
        )
        batch: list[tuple[str, str, dict[Any, Any] | None]] = []
        counts: dict[str, int] = {}
        for key_raw, entries in reply or []:
            key = as_text(key_raw)
            if key not in streams:
                continue
            counts[key] = len(entries)
            for entry_id, fields in entries:
                batch.append((key, as_text(entry_id), fields))
        for key in streams:
            cursor = self.cursors[key]
            cursor.more = counts.get(key, 0) >= self.settings.read_count
            # A history read ("0") that comes back empty: own pending drained, go on with ">".
            if cursor.next_id != ">" and counts.get(key, 0) == 0:
                if key in counts or reply is None:
                    cursor.next_id = ">"
        if batch:
            # Streams with entries still waiting, read now or left out as ahead of the rest.
            full = {k for k, c in self.cursors.items() if c.more}
            recheck = any(c != ">" for c in streams.values())
            await self.process(batch, recheck_deliveries=recheck, full=full)
        return len(batch)

    def _ahead(self, cursor: StreamCursor) -> bool:
        """True while another stream of the same furnace has a backlog (its last read was
        full) and this one already runs more than a hop past it: reading it further would
        only buffer entries of windows that cannot close yet (SERVING.md 1.7)."""
        if cursor.next_id != ">":
            return False
        margin = self.settings.grace_seconds + self.engine().manifest.window.hop_seconds
        return any(
            other.more and cursor.newest > other.newest + margin
            for other in self.cursors.values()
            if other.furnace_id == cursor.furnace_id and other is not cursor
        )

    async def claim_abandoned(self) -> int:
        """XAUTOCLAIM entries idle past claim_min_idle_ms (their consumer died) and process
        them. Each round claims up to 100 entries of every owned stream and processes them
        as one batch, so a furnace's current and frames are fed together (in time order)."""
        cursors = dict.fromkeys(self.cursors, "0-0")
        claimed = 0
        while cursors:
            batch: list[tuple[str, str, dict[Any, Any] | None]] = []
            full: set[str] = set()
            for key in list(cursors):
                reply = await self.client.execute_command(  # type: ignore[no-untyped-call]
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
                    await self._dead(key, entry_id, "trimmed", 0, "trimmed while pending")
                if deleted:
                    await self.client.xack(key, GROUP, *deleted)
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
                await self.process(batch, recheck_deliveries=True, full=full)
        await self.prune_consumers()
        return claimed

    async def prune_consumers(self) -> int:
        """XGROUP DELCONSUMER consumer names of owned streams that hold nothing pending and
        were idle past claim_min_idle_ms (a crashed or retired shard; SERVING.md 1.3). A live
        consumer pruned by mistake is recreated by its next XREADGROUP; nothing is lost
        because only names without pending entries go. Returns how many were removed."""
        removed = 0
        for key in list(self.cursors):
            for row in await self.client.xinfo_consumers(key, GROUP):
                name = as_text(row["name"])
                if name == self.consumer or int(row["pending"]):
                    continue
                # `idle`: since the last attempted read; a live consumer reads every BLOCK
                if int(row["idle"]) > self.settings.claim_min_idle_ms:
                    await self.client.xgroup_delconsumer(key, GROUP, name)
                    removed += 1
                    logger.info("removed idle consumer %s of %s", name, key)
        return removed

    async def _deliveries(self, key: str, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows = await self.client.xpending_range(
            key, GROUP, min=ids[0], max=ids[-1], count=len(ids) + 100
        )
        return {as_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def process(
        self,
        batch: list[tuple[str, str, dict[Any, Any] | None]],
        recheck_deliveries: bool = False,
        full: set[str] | None = None,
    ) -> None:
        """Feed, score, commit, then XACK every entry of the batch.

        `full`: keys with more entries waiting (their last read returned as many as asked); a
        furnace's windows then close only up to the newest time read from those streams.
        """
        now = time.time()
        acks: dict[str, list[str]] = {}
        touched: set[str] = set()
        deliveries: dict[str, dict[str, int]] = {}
        if recheck_deliveries:
            by_key: dict[str, list[str]] = {}
            for key, entry_id, _ in batch:
                by_key.setdefault(key, []).append(entry_id)
            for key, ids in by_key.items():
                deliveries[key] = await self._deliveries(key, sorted(ids, key=id_order))
        for key, entry_id, fields in batch:
            acks.setdefault(key, []).append(entry_id)
            cursor = self.cursors.get(key)
            if cursor is None:
                continue  # not ours any more; acked (it is not lost: XACK deletes nothing)
            n = deliveries.get(key, {}).get(entry_id, 1)
            if not fields:  # read from the pending list after it was trimmed (7.0: None,
                # 6.2 through redis-py: {}); an entry always has fields (XADD needs one)
                await self._dead(key, entry_id, "trimmed", n, "trimmed while pending")
                continue
            if n >= self.settings.max_deliveries:
                await self._dead(key, entry_id, "max_deliveries", n, "delivered too often")
                continue
            assembler = self.assemblers[cursor.furnace_id]
            try:
                ts, added = self._feed(assembler, cursor.modality, fields, now)
            except PoisonEntryError as exc:
                await self._dead(key, entry_id, exc.reason, n, str(exc))
                continue
            cursor.newest = max(cursor.newest, ts)
            if added == "late":
                self.metrics.entry_late(modality=cursor.modality)
            touched.add(cursor.furnace_id)
        windows: list[Window] = []
        for furnace_id in sorted(touched):
            lagging = [
                c.newest
                for k, c in self.cursors.items()
                if c.furnace_id == furnace_id and k in (full or ())
            ]
            limit = min(lagging) if lagging else None
            windows.extend(self.assemblers[furnace_id].pop_closed(limit=limit))
        if windows:
            await self.score_and_commit(windows)
        for key, ids in acks.items():
            await self.client.xack(key, GROUP, *ids)

    def _feed(
        self, assembler: WindowAssembler, modality: str, fields: dict[Any, Any], now: float
    ) -> tuple[float, str]:
        """Add one entry to its furnace's assembler: its ts and "added", "duplicate" or "late".

        Raises:
            PoisonEntryError: an entry that can never be processed (DLQ reason attached).
        """
        if modality == "current":
            ts, a, b, c = parse_current(fields, now)
            return ts, assembler.add_current(ts, a, b, c)
        ts = parse_ts(fields, now)
        data = field_bytes(fields, "image")
        if len(data) > MAX_IMAGE_BYTES:
            msg = f"image of {len(data)} bytes exceeds {MAX_IMAGE_BYTES} bytes"
            raise PoisonEntryError(msg, reason="too_large")
        px = assembler.spec.frame_px
        try:
            frame = decode_image(
                data,
                frame_px=px,
                max_pixels=self.settings.max_image_pixels,
                max_bytes=MAX_IMAGE_BYTES,
            )
        except ImageError as exc:
            raise PoisonEntryError(str(exc), reason=exc.reason) from exc
        return ts, assembler.add_frame(ts, frame)

    async def _dead(self, key: str, entry_id: str, reason: str, n: int, detail: str) -> None:
        parsed = self.keys.parse_stream(key)
        modality = parsed[1] if parsed else "unknown"
        await dead_letter(
            self.client,
            self.keys,
            source=key,
            entry_id=entry_id,
            reason=reason,
            deliveries=n,
            detail=detail,
            maxlen=self.settings.dlq_maxlen,
        )
        self.metrics.dead_letter(modality=modality, reason=reason)
        logger.warning("dead letter %s %s: %s (%s)", key, entry_id, reason, detail)

    # ----------------------------------------------------------------- scoring
    async def score_and_commit(self, windows: list[Window]) -> list[Detection]:
        detections = await self.score(windows)
        for det in detections:
            result = await commit_detection(
                self.client,
                self.keys,
                det,
                self.policy,
                detections_maxlen=self.settings.detections_maxlen,
                alerts_maxlen=self.settings.alerts_maxlen,
            )
            self.record(det, result, "redis")
        return detections

    async def _export_lag(self) -> None:
        for key, cursor in self.cursors.items():
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
