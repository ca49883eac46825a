"""The read loop's batch path (docs/design/serving.md 1.2-1.4, 1.7): XREADGROUP -> window
assemblers -> scores -> commits -> XACK.

`read_once` reads one batch (`XREADGROUP ... COUNT n`) over every owned stream; `process`
feeds it to the per-furnace window assemblers by sensor timestamp, scores every window the
batch closed in one ONNX run per modality (in the inference executor, off the event loop),
commits each detection idempotently (service/store.py), then `XACK`s the whole batch. Nothing
is acked before its windows are committed; a crash replays the batch and the idempotency check
drops what was already committed. Entries delivered `max_deliveries` times, and entries that
can never parse, go to the dead-letter stream.

Backlogs: a furnace's current and camera streams are read together, but after an outage one
can hold far older entries than the other (frames are trimmed sooner). While a stream's last
read was full (more entries wait), the furnace's windows close only up to the newest time read
from it, and a stream running ahead of it is not read further until it catches up.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from service.alerting import AlertPolicy
from service.detection import Detection
from service.engine import Engine
from service.entries import (
    Batch,
    PoisonEntryError,
    as_text,
    field_bytes,
    id_order,
    parse_current,
    parse_ts,
)
from service.images import ImageError, decode_image
from service.metrics import Metrics
from service.settings import Settings
from service.store import GROUP, CommitResult, Keys, commit_detection, dead_letter
from service.types import MODALITIES, Window
from service.windows import WindowAssembler

logger = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 8 * 1024 * 1024  # one encoded camera frame


@dataclass
class StreamCursor:
    """Per input stream: where the next XREADGROUP starts ("0": own pending first), the
    newest sensor time fed from it, and whether its last read was full (more is waiting)."""

    furnace_id: str
    modality: str
    next_id: str = "0"
    newest: float = -math.inf
    more: bool = False


class StreamReader:
    """Reads, scores, commits and acks the owned furnaces' streams as consumer `consumer`.

    `blocking` is the connection for the blocking XREADGROUP, `client` the one for everything
    else. `cursors` (per stream key) and `assemblers` (per furnace) are the in-memory state;
    `forget()` drops it after a Redis error, and the consumer rebuilds it (service/recovery.py).
    """

    def __init__(
        self,
        settings: Settings,
        keys: Keys,
        consumer: str,
        *,
        client: aioredis.Redis,
        blocking: aioredis.Redis,
        engine: Callable[[], Engine],
        metrics: Metrics,
        score: Callable[[list[Window]], Awaitable[list[Detection]]],
        record: Callable[[Detection, CommitResult | None, str], None],
        policy: Callable[[], AlertPolicy],
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.consumer = consumer
        self.client = client
        self.blocking = blocking
        self.engine = engine
        self.metrics = metrics
        self.score = score
        self.record = record
        self.policy = policy
        self.cursors: dict[str, StreamCursor] = {}
        self.assemblers: dict[str, WindowAssembler] = {}

    def add(self, furnace_id: str, assembler: WindowAssembler) -> list[Window]:
        """Start reading a furnace from its own pending entries, with `assembler` (rebuilt
        from history); returns the windows that history closed, still to be committed."""
        windows = assembler.pop_closed()
        self.assemblers[furnace_id] = assembler
        for modality in MODALITIES:
            self.cursors[self.keys.stream(furnace_id, modality)] = StreamCursor(
                furnace_id, modality
            )
        return windows

    def forget(self) -> None:
        """Drop what lives in memory (after a Redis error mid-batch nothing half-done may be
        trusted): cursors restart at own pending entries, buffers are rebuilt from history."""
        self.cursors.clear()
        self.assemblers.clear()

    async def read_once(self) -> int:
        """One XREADGROUP over every owned stream, processed and acked. Returns entries read."""
        if not self.cursors:
            return 0
        streams = {key: c.next_id for key, c in self.cursors.items() if not self._ahead(c)}
        reply: Any = await self.blocking.xreadgroup(
            GROUP,
            self.consumer,
            streams=streams,  # type: ignore[arg-type]
            count=self.settings.read_count,
            block=self.settings.block_ms,
        )
        batch: Batch = []
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
        only buffer entries of windows that cannot close yet (docs/design/serving.md 1.7)."""
        if cursor.next_id != ">":
            return False
        margin = self.settings.grace_seconds + self.engine().manifest.window.hop_seconds
        return any(
            other.more and cursor.newest > other.newest + margin
            for other in self.cursors.values()
            if other.furnace_id == cursor.furnace_id and other is not cursor
        )

    async def _deliveries(self, key: str, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows = await self.client.xpending_range(
            key, GROUP, min=ids[0], max=ids[-1], count=len(ids) + 100
        )
        return {as_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def process(
        self,
        batch: Batch,
        recheck_deliveries: bool = False,
        full: set[str] | None = None,
    ) -> None:
        """Feed, score, commit, then XACK every entry of the batch.

        `full`: keys with more entries waiting (their last read returned as many as asked); a
        furnace's windows then close only up to the newest time read from those streams.
        """
        now, px = time.time(), self.settings.max_image_pixels
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
                await self.dead_letter(key, entry_id, "trimmed", n, "trimmed while pending")
                continue
            if n >= self.settings.max_deliveries:
                await self.dead_letter(key, entry_id, "max_deliveries", n, "delivered too often")
                continue
            assembler = self.assemblers[cursor.furnace_id]
            try:
                ts, added = feed_entry(assembler, cursor.modality, fields, now, max_image_pixels=px)
            except PoisonEntryError as exc:
                await self.dead_letter(key, entry_id, exc.reason, n, str(exc))
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

    async def dead_letter(self, key: str, entry_id: str, reason: str, n: int, detail: str) -> None:
        """XADD the entry to the dead-letter stream (the caller XACKs it), count and log it."""
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
        policy = self.policy()  # the serving bundle's (FURNACE_ALERT_* override it)
        for det in detections:
            result = await commit_detection(
                self.client,
                self.keys,
                det,
                policy,
                detections_maxlen=self.settings.detections_maxlen,
                alerts_maxlen=self.settings.alerts_maxlen,
            )
            self.record(det, result, "redis")
        return detections


def feed_entry(
    assembler: WindowAssembler,
    modality: str,
    fields: dict[Any, Any],
    now: float,
    *,
    max_image_pixels: int,
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
            max_pixels=max_image_pixels,
            max_bytes=MAX_IMAGE_BYTES,
        )
    except ImageError as exc:
        raise PoisonEntryError(str(exc), reason=exc.reason) from exc
    return ts, assembler.add_frame(ts, frame)
