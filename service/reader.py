"""The read loop's batch path (docs/design/serving.md 1.2-1.4, 1.7): XREADGROUP -> window
assemblers -> scores -> commits -> XACK.

`read_once` reads one batch (`XREADGROUP ... COUNT n`) over every owned stream; `process`
feeds it to the per-furnace window assemblers by sensor timestamp, scores every window the
batch closed in one ONNX run per modality (in the inference executor, off the event loop),
commits each detection idempotently (service/store.py), then `XACK`s the whole batch. Nothing
is acked before its windows are committed; a crash replays the batch and the idempotency check
drops what was already committed. Entries delivered `max_deliveries` times, and entries that
can never parse, go to the dead-letter stream, and so do entries whose sensor time lies more
than FURNACE_MAX_FUTURE_SKEW_SECONDS after their arrival ("future": one entry must never move a
furnace's clock) and entries at or before a window already closed ("late"), unless the furnace
is in backfill mode (FURNACE_BACKFILL_FURNACES): then late entries feed a second assembler whose
windows are scored in order and written as backfill detections (service/store.py).

A stream that lost the consumer group (deleted, or the group destroyed: NOGROUP) gets it back
(`restore_groups`) without stopping the other furnaces.

Backlogs: a furnace's current and camera streams are read together, but after an outage one
can hold far older entries than the other (frames are trimmed sooner). While a stream's last
read was full (more entries wait), the furnace's windows close only up to the newest time read
from it, and a stream running ahead of it is not read further until it catches up.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import redis.asyncio as aioredis
from numpy.typing import NDArray
from redis.exceptions import ResponseError

from service.alerting import AlertPolicy
from service.detection import Detection
from service.engine import Engine
from service.entries import (
    MAX_TS_AHEAD,
    Batch,
    PoisonEntryError,
    arrival_time,
    as_text,
    field_bytes,
    id_order,
    parse_current,
    parse_ts,
)
from service.images import ImageError, decode_image
from service.metrics import Metrics
from service.settings import Settings
from service.store import (
    GROUP,
    CommitResult,
    Keys,
    commit_backfill,
    commit_detection,
    dead_letter,
)
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
    last_id: str | None = None  # the newest entry id processed (a lost group restarts after it)
    backfill_newest: float = -math.inf  # the newest sensor time fed to the furnace's backfill


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
        self.backfill: dict[str, WindowAssembler] = {}  # furnaces in backfill mode, lazily

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
        self.backfill.clear()

    async def restore_groups(self) -> list[str]:
        """Recreate the consumer group on owned streams that lost it (the stream was deleted,
        or the group destroyed), so one such stream does not fail every XREADGROUP (NOGROUP).

        A stream that still holds entries restarts after the last entry processed from it
        (from its start when none was); a missing one is created empty (MKSTREAM) and read
        from its first new entry. Returns the keys whose group was recreated.
        """
        restored = []
        for key, cursor in self.cursors.items():
            try:
                groups: Any = await self.client.xinfo_groups(key)
            except ResponseError:  # no such key
                groups = []
            if any(as_text(g["name"]) == GROUP for g in groups):
                continue
            exists = bool(await self.client.exists(key))
            start = cursor.last_id if exists and cursor.last_id else "0"
            try:
                await self.client.xgroup_create(key, GROUP, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            cursor.more = False
            restored.append(key)
            logger.warning(
                "consumer group %s of %s was gone (stream deleted or group destroyed); "
                "recreated from %s, its pending entries are lost",
                GROUP,
                key,
                start,
            )
        return restored

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
        rest = {k: v for k, v in streams.items() if k not in {as_text(r[0]) for r in reply or []}}
        if reply and rest:
            # Redis < 7.2 answers a blocked read with only the stream that woke it: read the
            # others now (without blocking), or a burst on one stream would close windows
            # before the other's entries of the same time are read, and those would be late.
            others: Any = await self.blocking.xreadgroup(
                GROUP,
                self.consumer,
                streams=rest,  # type: ignore[arg-type]
                count=self.settings.read_count,
            )
            reply = [*reply, *(others or [])]
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
            # A stream still re-reading its own pending entries ("0") has not read its new
            # ones yet: like a full read, it holds the furnace's windows back, or a restart
            # would let the other stream's new entries close windows ahead of them (late).
            cursor.more = counts.get(key, 0) >= self.settings.read_count or cursor.next_id != ">"
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
        ahead = self.settings.max_future_skew_seconds
        acks: dict[str, list[str]] = {}
        touched: set[str] = set()
        backfilled: set[str] = set()
        late: Counter[str] = Counter()
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
            cursor.last_id = entry_id
            assembler = self.assemblers[cursor.furnace_id]
            try:
                ts, value = parse_entry(
                    cursor.modality,
                    fields,
                    arrival_time(entry_id, now),
                    frame_px=assembler.spec.frame_px,
                    max_image_pixels=px,
                    max_ahead=ahead,
                )
            except PoisonEntryError as exc:
                await self.dead_letter(key, entry_id, exc.reason, n, str(exc))
                continue
            added = add_parsed(assembler, ts, value)
            cursor.newest = max(cursor.newest, ts)
            touched.add(cursor.furnace_id)
            if added == "late" and n <= 1:  # a redelivered entry was fed (and its windows
                # committed) before: only a first delivery is late data
                if await self._late(key, entry_id, cursor, ts, value):
                    backfilled.add(cursor.furnace_id)
                else:
                    late[key] += 1
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
        await self._close_backfill(backfilled)
        for key, count in late.items():
            last = self.assemblers[self.cursors[key].furnace_id].last_closed_end
            logger.warning(
                "%d late entries of %s (at or before the closed window ending %s) dead-lettered "
                "as 'late'; FURNACE_BACKFILL_FURNACES scores such entries instead",
                count,
                key,
                last,
            )
        for key, ids in acks.items():
            await self.client.xack(key, GROUP, *ids)

    async def _late(
        self, key: str, entry_id: str, cursor: StreamCursor, ts: float, value: Parsed
    ) -> bool:
        """A first-delivered entry at or before a closed window of its furnace: counted, then
        fed to the furnace's backfill assembler (True) or dead-lettered as "late" (False)."""
        furnace_id, modality = cursor.furnace_id, cursor.modality
        if self.settings.backfills(furnace_id):
            live = self.assemblers[furnace_id]
            backfill = self.backfill.get(furnace_id)
            if backfill is None:
                backfill = self.backfill[furnace_id] = WindowAssembler(
                    furnace_id,
                    live.spec,
                    grace_seconds=self.settings.grace_seconds,
                    staleness_seconds=self.settings.staleness_seconds,
                )
            if add_parsed(backfill, ts, value) != "late":
                self.metrics.entry_late(modality=modality, reason="backfill")
                cursor.backfill_newest = max(cursor.backfill_newest, ts)
                return True
            detail = f"ts {ts:.3f} is behind the backfill of this furnace too"
        else:
            last = self.assemblers[furnace_id].last_closed_end
            detail = (
                f"ts {ts:.3f} is at or before the furnace's closed window ending {last}: the "
                "windows it belongs to were scored without it"
            )
        self.metrics.entry_late(modality=modality)
        await self.dead_letter(key, entry_id, "late", 1, detail, log=False)
        return False

    async def _close_backfill(self, furnaces: set[str]) -> None:
        """Score and write the backfill windows that this batch's late entries closed.

        While a backfilling stream of the furnace has more entries waiting, its windows close
        only up to the newest backfill time read from it (as for live windows); once every
        stream of the furnace is caught up, every window up to the newest backfill entry
        closes."""
        windows: list[Window] = []
        for furnace_id in sorted(furnaces):
            mine = [c for k, c in self.cursors.items() if c.furnace_id == furnace_id]
            waiting = [
                c.backfill_newest for c in mine if c.more and math.isfinite(c.backfill_newest)
            ]
            backfill = self.backfill[furnace_id]
            if any(c.more for c in mine):
                windows.extend(backfill.pop_closed(limit=min(waiting) if waiting else None))
            else:
                until = backfill.newest + self.settings.grace_seconds
                windows.extend(backfill.pop_closed(until=until))
        if not windows:
            return
        detections = await self.score(windows)
        for det in detections:
            written = await commit_backfill(
                self.client,
                self.keys,
                det,
                detections_maxlen=self.settings.detections_maxlen,
            )
            if written:
                self.metrics.window_scored(source="backfill", modalities=det.decided_by)
        logger.info(
            "backfill: scored %d windows of %s (ends %.3f to %.3f)",
            len(detections),
            ",".join(sorted(furnaces)),
            windows[0].end,
            windows[-1].end,
        )

    async def dead_letter(
        self, key: str, entry_id: str, reason: str, n: int, detail: str, *, log: bool = True
    ) -> None:
        """XADD the entry to the dead-letter stream (the caller XACKs it), count and log it
        (`log=False`: the caller logs a summary instead)."""
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
        if log:
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


Parsed: TypeAlias = tuple[float, float, float] | NDArray[np.uint8]  # phases (A) or a decoded frame


def parse_entry(
    modality: str,
    fields: dict[Any, Any],
    now: float,
    *,
    frame_px: int,
    max_image_pixels: int,
    max_ahead: float = MAX_TS_AHEAD,
) -> tuple[float, Parsed]:
    """One entry's sensor time and value: (a, b, c) for current, the decoded (frame_px,
    frame_px, 3) frame for camera. `now` is the entry's arrival; `ts` may lead it by
    `max_ahead` seconds at most.

    Raises:
        PoisonEntryError: an entry that can never be processed (DLQ reason attached).
    """
    if modality == "current":
        ts, a, b, c = parse_current(fields, now, max_ahead)
        return ts, (a, b, c)
    ts = parse_ts(fields, now, max_ahead)
    data = field_bytes(fields, "image")
    if len(data) > MAX_IMAGE_BYTES:
        msg = f"image of {len(data)} bytes exceeds {MAX_IMAGE_BYTES} bytes"
        raise PoisonEntryError(msg, reason="too_large")
    try:
        frame = decode_image(
            data,
            frame_px=frame_px,
            max_pixels=max_image_pixels,
            max_bytes=MAX_IMAGE_BYTES,
        )
    except ImageError as exc:
        raise PoisonEntryError(str(exc), reason=exc.reason) from exc
    return ts, frame


def add_parsed(assembler: WindowAssembler, ts: float, value: Parsed) -> str:
    """Buffer a parsed entry: "added", "duplicate" or "late" (`WindowAssembler.add_current`)."""
    if isinstance(value, tuple):
        return assembler.add_current(ts, *value)
    return assembler.add_frame(ts, value)


def feed_entry(
    assembler: WindowAssembler,
    modality: str,
    fields: dict[Any, Any],
    now: float,
    *,
    max_image_pixels: int,
    max_ahead: float = MAX_TS_AHEAD,
) -> tuple[float, str]:
    """Add one entry to its furnace's assembler: its ts and "added", "duplicate" or "late".

    `now` is the entry's arrival (`service.entries.arrival_time`); its ts may lead it by
    `max_ahead` seconds at most (the service passes FURNACE_MAX_FUTURE_SKEW_SECONDS).

    Raises:
        PoisonEntryError: an entry that can never be processed (DLQ reason attached).
    """
    ts, value = parse_entry(
        modality,
        fields,
        now,
        frame_px=assembler.spec.frame_px,
        max_image_pixels=max_image_pixels,
        max_ahead=max_ahead,
    )
    return ts, add_parsed(assembler, ts, value)
