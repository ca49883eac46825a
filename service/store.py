"""Redis side effects shared by the HTTP API and the stream consumer (docs/design/serving.md
1.4-1.5).

Every key lives under the configured prefix. A detection is committed idempotently, keyed by
(furnace, window end): `WATCH furnace:{id}:state` -> skip when window_end <= last_window_end ->
`MULTI`: state hash, `XADD detections`, `XADD alerts` per episode event -> `EXEC`, retried on
`WatchError`. A redelivered window therefore never makes a second detection or episode.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from service.alerting import AlertEvent, AlertPolicy, AlertState, next_state
from service.detection import Detection
from service.entries import as_text

T = TypeVar("T")

GROUP = "sentinel"  # the consumer group every replica reads the input streams under


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (tests give each test its own)."""

    prefix: str = ""

    def current(self, furnace_id: str) -> str:
        return f"{self.prefix}furnace:{furnace_id}:current"

    def camera(self, furnace_id: str) -> str:
        return f"{self.prefix}furnace:{furnace_id}:camera"

    def stream(self, furnace_id: str, modality: str) -> str:
        return self.current(furnace_id) if modality == "current" else self.camera(furnace_id)

    def detections(self, furnace_id: str) -> str:
        return f"{self.prefix}furnace:{furnace_id}:detections"

    def state(self, furnace_id: str) -> str:
        return f"{self.prefix}furnace:{furnace_id}:state"

    def backfilled(self, furnace_id: str) -> str:
        """A sorted set of the window ends written as backfill (score and member: the end)."""
        return f"{self.prefix}furnace:{furnace_id}:backfilled"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}alerts"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq"

    @property
    def furnaces(self) -> str:
        """A set of every furnace id the service has seen (for GET /v1/furnaces)."""
        return f"{self.prefix}furnaces"

    @property
    def model_desired(self) -> str:
        """The bundle name every replica should serve (docs/design/serving.md 3.2)."""
        return f"{self.prefix}model:desired"

    def lease(self, index: int, count: int) -> str:
        return f"{self.prefix}shard:{index}-of-{count}"

    @property
    def layout(self) -> str:
        return f"{self.prefix}shard:layout"

    def parse_stream(self, key: str) -> tuple[str, str] | None:
        """`{prefix}furnace:{id}:{modality}` -> (id, modality); None for other keys."""
        if not key.startswith(f"{self.prefix}furnace:"):
            return None
        parts = key[len(self.prefix) :].split(":")
        if len(parts) != 3 or parts[2] not in ("current", "camera"):
            return None
        return parts[1], parts[2]


@dataclass(frozen=True)
class CommitResult:
    applied: bool  # False: this window end was already committed (a redelivery)
    state: AlertState
    events: list[AlertEvent]


def alerting_form(det: Detection) -> Detection:
    """The detection as alerting and the stream fields see it: a window without a usable
    modality (none decided, or a non-finite score) decides nothing, neither abnormal nor
    clean."""
    if det.decided:
        return det
    return replace(det, modalities=(), is_abnormal=False)


def read_detection(fields: Mapping[Any, Any]) -> Detection:
    """A detections-stream entry (as XRANGE returns it) back into a `Detection`, so the
    stream can be replayed through `next_state` (docs/design/serving.md 2.3).

    Raises:
        ValueError: an entry without a parsable `data` field.
    """
    data = json.loads(as_text(fields[b"data"] if b"data" in fields else fields["data"]))
    return Detection.from_dict(data)


HISTORY_PAGE = 64  # detections per XREVRANGE while priming a furnace's code history


async def recent_codes(
    client: aioredis.Redis,
    keys: Keys,
    furnace_id: str,
    *,
    model_version: str,
    seconds: float,
    max_entries: int,
) -> list[tuple[float, dict[str, list[int]]]]:
    """The per-modality codes of a furnace's recent detections written by `model_version`,
    oldest first: (window end, modality -> codes) for the window ends within `seconds` of the
    newest such one (docs/service.md "Memory"). Reads newest first in pages of
    `HISTORY_PAGE` (XREVRANGE ... COUNT), at most `max_entries` entries, and stops early at a
    page that lies wholly before the span. Entries without parsable codes are skipped.
    """

    def codes(data: dict[str, Any]) -> dict[str, list[int]]:
        return {str(m): [int(c) for c in v] for m, v in (data.get("codes") or {}).items()}

    return await _recent(client, keys, furnace_id, model_version, seconds, max_entries, codes)


async def recent_raw_scores(
    client: aioredis.Redis,
    keys: Keys,
    furnace_id: str,
    *,
    model_version: str,
    seconds: float,
    max_entries: int,
) -> list[tuple[float, dict[str, float]]]:
    """Like `recent_codes`, the raw (pre-adaptation) score of each modality that decided
    a recent detection: what per-furnace adaptation's history is rebuilt from
    (docs/service.md "Per-furnace adaptation")."""

    def raw(data: dict[str, Any]) -> dict[str, float]:
        per = data.get("per_modality") or {}
        return {str(m): float(r["raw_score"]) for m, r in per.items() if "raw_score" in r}

    return await _recent(client, keys, furnace_id, model_version, seconds, max_entries, raw)


async def _recent(
    client: aioredis.Redis,
    keys: Keys,
    furnace_id: str,
    model_version: str,
    seconds: float,
    max_entries: int,
    pick: Callable[[dict[str, Any]], T],
) -> list[tuple[float, T]]:
    """`pick(data)` of a furnace's recent detections of `model_version`, oldest first
    (`recent_codes`); entries `pick` cannot parse are skipped."""
    found: list[tuple[float, T]] = []
    newest: float | None = None
    top, read = "+", 0
    key = keys.detections(furnace_id)
    while read < max_entries:
        count = min(HISTORY_PAGE, max_entries - read)
        rows: Any = await client.xrevrange(key, max=top, min="-", count=count)
        if not rows:
            break
        read += len(rows)
        top = f"({as_text(rows[-1][0])}"
        in_span = False
        for _, fields in rows:
            got = {as_text(k): v for k, v in fields.items()}
            if as_text(got.get("model_version", b"")) != model_version:
                continue
            try:
                end = float(as_text(got["window_end"]))
                parsed = pick(json.loads(as_text(got["data"])))
            except (KeyError, ValueError, TypeError, AttributeError):
                continue
            newest = end if newest is None else max(newest, end)
            if end >= newest - seconds:
                in_span = True
                found.append((end, parsed))
        if len(rows) < count or (newest is not None and not in_span):
            break
    if newest is not None:
        found = [(end, value) for end, value in found if end >= newest - seconds]
    found.reverse()  # the stream's order: the order the windows were first stored in
    return found


async def load_state(client: aioredis.Redis, keys: Keys, furnace_id: str) -> dict[str, str]:
    """The raw `furnace:{id}:state` hash as str -> str ({} before any detection)."""
    raw = await client.hgetall(keys.state(furnace_id))
    return {as_text(k): as_text(v) for k, v in raw.items()}


def parse_state(furnace_id: str, stored: Mapping[str, str]) -> AlertState:
    """The alert state in a stored hash (`AlertState(furnace_id)` for an empty one)."""
    if not stored:
        return AlertState.initial(furnace_id)
    return AlertState.from_dict(stored)


def detection_entry(
    det: Detection, view: Detection, payload: str, *, source: str | None = None
) -> dict[FieldT, EncodableT]:
    """The fields of a `furnace:{id}:detections` entry: the alerting view's decision (`view`,
    from `alerting_form`), the detection as JSON (`payload`) and, for backfill, `source`."""
    entry: dict[FieldT, EncodableT] = {
        "window_end": repr(det.window_end),
        "condition": det.condition,
        "score": repr(float(view.score)) if view.modalities else "",
        "is_abnormal": "1" if view.is_abnormal else "0",
        "decided_by": view.decided_by,
        "model_version": det.model_version,
    }
    if source is not None:
        entry["source"] = source
    entry["data"] = payload
    return entry


async def commit_detection(
    client: aioredis.Redis,
    keys: Keys,
    det: Detection,
    policy: AlertPolicy,
    *,
    detections_maxlen: int,
    alerts_maxlen: int,
    extra: dict[str, Any] | None = None,
) -> CommitResult:
    """Apply one detection to the furnace's alert state, exactly once per window end.

    WATCH the state hash -> skip when window_end <= last_window_end -> MULTI: the state hash
    (AlertState fields plus the latest detection), XADD detections, XADD alerts per event,
    SADD furnaces -> EXEC; a concurrent writer (WatchError) makes it start over.
    """
    key = keys.state(det.furnace_id)
    record = {**det.to_dict(), **(extra or {})}
    payload = json.dumps(record, allow_nan=False)
    view = alerting_form(det)
    while True:
        async with client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                raw = await pipe.hgetall(key)
                stored = {as_text(k): as_text(v) for k, v in raw.items()}
                state = parse_state(det.furnace_id, stored)
                last = state.last_window_end
                if last is not None and det.window_end <= last:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                    return CommitResult(False, state, [])
                new_state, events = next_state(state, view, policy)
                pipe.multi()  # type: ignore[no-untyped-call]
                mapping: dict[FieldT, EncodableT] = {
                    "detection": payload,
                    "updated_at": repr(time.time()),
                }
                for name, value in new_state.to_dict().items():
                    mapping[name] = value
                pipe.hset(key, mapping=mapping)
                pipe.xadd(
                    keys.detections(det.furnace_id),
                    detection_entry(det, view, payload),
                    maxlen=detections_maxlen,
                    approximate=True,
                )
                for ev in events:
                    event: dict[FieldT, EncodableT] = {}
                    for name, value in ev.to_dict().items():
                        event[name] = value
                    pipe.xadd(
                        keys.alerts,
                        event,
                        maxlen=alerts_maxlen,
                        approximate=True,
                    )
                pipe.sadd(keys.furnaces, det.furnace_id)
                await pipe.execute()
                return CommitResult(True, new_state, events)
            except WatchError:
                continue


async def commit_backfill(
    client: aioredis.Redis, keys: Keys, det: Detection, *, detections_maxlen: int
) -> bool:
    """Write a backfill detection (a window of late entries, FURNACE_BACKFILL_FURNACES) to the
    detections stream, once per window end: WATCH `furnace:{id}:backfilled` -> skip when the
    end is in it -> MULTI: ZADD the end (the set keeps the newest `detections_maxlen`), XADD
    the detection with `source` "backfill" -> EXEC. The alert state is not touched: the live
    windows went past it. Returns whether it was written (False: a redelivery).
    """
    key = keys.backfilled(det.furnace_id)
    member = repr(det.window_end)
    payload = json.dumps({**det.to_dict(), "source": "backfill"}, allow_nan=False)
    view = alerting_form(det)
    while True:
        async with client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                if await pipe.zscore(key, member) is not None:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.zadd(key, {member: det.window_end})
                pipe.zremrangebyrank(key, 0, -detections_maxlen - 1)
                pipe.xadd(
                    keys.detections(det.furnace_id),
                    detection_entry(det, view, payload, source="backfill"),
                    maxlen=detections_maxlen,
                    approximate=True,
                )
                pipe.sadd(keys.furnaces, det.furnace_id)
                await pipe.execute()
                return True
            except WatchError:
                continue


async def dead_letter(
    client: aioredis.Redis,
    keys: Keys,
    *,
    source: str,
    entry_id: str,
    reason: str,
    deliveries: int,
    detail: str,
    maxlen: int,
) -> None:
    """`XADD dlq` (the caller XACKs afterwards: a crash between leaves a duplicate, not a loss)."""
    await client.xadd(
        keys.dlq,
        {
            "source": source,
            "id": entry_id,
            "reason": reason,
            "deliveries": str(deliveries),
            "detail": detail[:500],
            "at": repr(time.time()),
        },
        maxlen=maxlen,
        approximate=True,
    )
