"""Parsing stream entries (docs/design/serving.md 1.2-1.4): fields, timestamps, XAUTOCLAIM replies.

An entry that can never be processed raises `PoisonEntryError` with the dead-letter reason;
a NaN phase is sensor health, not poison, and parses.
"""

from __future__ import annotations

import math
from typing import Any, TypeAlias

MIN_TS = 946_684_800.0  # 2000-01-01: sensor clocks before this are broken
# The default future bound of offline callers (scorecard, calibration); the service passes
# FURNACE_MAX_FUTURE_SKEW_SECONDS instead (a live furnace's sensor time follows the wall clock)
MAX_TS_AHEAD = 30 * 86_400.0

# Entries as read or claimed: (stream key, entry id, fields; None or {} when trimmed)
Batch: TypeAlias = list[tuple[str, str, dict[Any, Any] | None]]


class PoisonEntryError(ValueError):
    """An entry that can never be processed; `reason` is the DLQ reason label."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_autoclaim(reply: Any) -> tuple[str, list[tuple[str, dict[Any, Any]]], list[str]]:
    """XAUTOCLAIM's reply as (cursor, entries, deleted ids), for Redis 6.2 and >= 7.0 shapes.

    7.0 replies [cursor, entries, deleted]; 6.2 replies [cursor, entries] with nil entries for
    ids trimmed while pending (docs/design/serving.md 1.3). redis-py may already have parsed it: its
    parser turns a nil entry into (None, None) and fields into a dict.
    """
    if not isinstance(reply, list | tuple) or len(reply) not in (2, 3):
        msg = f"unexpected XAUTOCLAIM reply {reply!r:.200}"
        raise ValueError(msg)
    cursor, entries, *rest = reply
    deleted = [as_text(i) for i in (rest[0] or [] if rest else [])]
    out: list[tuple[str, dict[Any, Any]]] = []
    for item in entries or []:
        if item is None or item[0] is None:  # 6.2: a nil entry (its id is unknown)
            continue
        entry_id, fields = item[0], item[1]
        if fields is None:  # trimmed while pending, id known
            deleted.append(as_text(entry_id))
            continue
        out.append((as_text(entry_id), fields if isinstance(fields, dict) else _pairs(fields)))
    return as_text(cursor), out, deleted


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def as_text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def field_bytes(fields: dict[Any, Any], name: str) -> bytes:
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        msg = f"missing field {name!r} (have {sorted(as_text(k) for k in fields)})"
        raise PoisonEntryError(msg, reason="shape")
    return value if isinstance(value, bytes) else str(value).encode()


def plausible_ts(ts: float, now: float, max_ahead: float = MAX_TS_AHEAD) -> bool:
    """A finite sensor time after 2000-01-01 and at most `max_ahead` seconds past `now`."""
    return math.isfinite(ts) and MIN_TS <= ts <= now + max_ahead


def arrival_time(entry_id: str, now: float) -> float:
    """When an entry reached Redis: the milliseconds part of an auto-generated stream id, or
    `now` when the id is not a plausible Unix time in ms (explicit ids) or lies after `now`.

    The future-time bound is judged against it, so an entry refused once is refused again when
    it is re-read later (a rebuild from history, a redelivery)."""
    ms, _, _ = entry_id.partition("-")
    try:
        added = int(ms) / 1000.0
    except ValueError:
        return now
    return added if MIN_TS <= added <= now else now


def parse_ts(fields: dict[Any, Any], now: float, max_ahead: float = MAX_TS_AHEAD) -> float:
    """The entry's `ts`: a Unix time after 2000-01-01 and at most `max_ahead` s after `now`.

    Raises:
        PoisonEntryError: reason "timestamp" (not a number, non-finite, before 2000) or
            "future" (more than `max_ahead` seconds ahead of `now`).
    """
    raw = field_bytes(fields, "ts")
    try:
        ts = float(raw)
    except ValueError:
        msg = f"ts {raw[:40]!r} is not a number"
        raise PoisonEntryError(msg, reason="timestamp") from None
    if math.isfinite(ts) and ts > now + max_ahead and ts >= MIN_TS:
        msg = (
            f"ts {ts!r} is {ts - now:.1f} s ahead of the entry's arrival; at most {max_ahead:g} s "
            "are allowed (FURNACE_MAX_FUTURE_SKEW_SECONDS): check the sensor's clock"
        )
        raise PoisonEntryError(msg, reason="future")
    if not plausible_ts(ts, now, max_ahead):
        msg = f"ts {ts!r} is not a plausible Unix time in seconds"
        raise PoisonEntryError(msg, reason="timestamp")
    return ts


def parse_current(
    fields: dict[Any, Any], now: float, max_ahead: float = MAX_TS_AHEAD
) -> tuple[float, float, float, float]:
    """(ts, a, b, c); NaN phases are allowed (sensor health, not poison)."""
    ts = parse_ts(fields, now, max_ahead)
    values = []
    for phase in ("a", "b", "c"):
        raw = field_bytes(fields, phase)
        try:
            v = float(raw)
        except ValueError:
            msg = f"phase {phase} {raw[:40]!r} is not a number"
            raise PoisonEntryError(msg, reason="shape") from None
        if math.isinf(v):
            v = math.nan  # an infinite reading is a sensor fault, like NaN
        values.append(v)
    return ts, values[0], values[1], values[2]


def id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
