"""Alert episodes from per-window detections: a pure, replayable state machine
(docs/design/serving.md 1.5).

`next_state(state, detection)` opens an episode when `k` of the last `n` scored
windows are abnormal and closes it after `m` consecutive clean ones (hysteresis). It is
idempotent per (furnace, window end): a detection at or before `state.last_window_end` changes
nothing, so a redelivered window makes no second episode. Episode ids derive from the furnace
and the opening window end, so replaying the detections stream rebuilds the same episodes
(docs/design/serving.md 2.3). The state is stored in the `furnace:{id}:state` hash as strings
(`AlertState.to_dict` / `from_dict`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from service.detection import Detection
from service.entries import as_text

CONDITION_UNKNOWN: Final = "unknown"  # an episode whose abnormal windows all predicted "normal"
EVENT_KINDS: Final = ("opened", "updated", "closed")
_STATE_VERSION: Final = "1"


@dataclass(frozen=True)
class AlertPolicy:
    """Hysteresis: open on `k` abnormal of the last `n` scored windows, close on `m`
    consecutive clean windows; a gap above `max_gap_seconds` (None: never) forgets history."""

    k: int = 3
    n: int = 4
    m: int = 3
    max_gap_seconds: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n or self.m < 1:
            msg = f"need 1 <= k <= n and m >= 1, got {self}"
            raise ValueError(msg)


class PolicyLike(Protocol):
    """k, n and m of a policy (`AlertPolicy`, or a bundle's `service.bundle.BundleAlertPolicy`)."""

    @property
    def k(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def m(self) -> int: ...


def resolve_policy(
    bundle: PolicyLike | None,
    *,
    k: int | None = None,
    n: int | None = None,
    m: int | None = None,
) -> AlertPolicy:
    """The policy a replica runs: each of `k`, `n`, `m` given explicitly (FURNACE_ALERT_K/N/M)
    wins; the others come from the bundle's calibrated policy (None: a bundle without one),
    else from the defaults (3 of 4, close after 3).

    Raises:
        ValueError: the combination has k > n; the message says where each value came from.
    """
    base = bundle if bundle is not None else AlertPolicy()
    chosen = {
        key: (explicit, "FURNACE_ALERT_" + key.upper())
        if explicit is not None
        else (getattr(base, key), "the bundle" if bundle is not None else "the default")
        for key, explicit in (("k", k), ("n", n), ("m", m))
    }
    try:
        return AlertPolicy(k=chosen["k"][0], n=chosen["n"][0], m=chosen["m"][0])
    except ValueError as exc:
        where = ", ".join(f"{key}={v} ({src})" for key, (v, src) in chosen.items())
        msg = f"alert policy {where}: need 1 <= k <= n and m >= 1"
        raise ValueError(msg) from exc


@dataclass(frozen=True)
class RecentWindow:
    """One scored window in the k-of-n memory."""

    window_end: float
    abnormal: bool
    score: float
    condition: str
    modalities: str


@dataclass(frozen=True)
class AlertEpisode:
    """One abnormal-condition episode of one furnace (times are window ends)."""

    id: str
    furnace_id: str
    condition: str  # most voted non-normal condition among its abnormal windows
    opened_at: float
    peak_score: float
    raised_by: str  # "both", "current" or "camera": the modalities that opened it
    closed_at: float | None = None
    votes: tuple[tuple[str, int], ...] = ()  # condition -> abnormal windows, first-seen order

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (numbers stay numbers; `votes` becomes a list of pairs)."""
        return {
            "id": self.id,
            "furnace_id": self.furnace_id,
            "condition": self.condition,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "peak_score": self.peak_score,
            "raised_by": self.raised_by,
            "votes": [[c, n] for c, n in self.votes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertEpisode:
        """Inverse of `to_dict`.

        Raises:
            ValueError: for missing keys or wrong types.
        """
        try:
            closed = data["closed_at"]
            return cls(
                id=str(data["id"]),
                furnace_id=str(data["furnace_id"]),
                condition=str(data["condition"]),
                opened_at=float(data["opened_at"]),
                peak_score=float(data["peak_score"]),
                raised_by=str(data["raised_by"]),
                closed_at=None if closed is None else float(closed),
                votes=tuple((str(c), int(n)) for c, n in data["votes"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"invalid alert episode {dict(data)!r}: {exc!r}"
            raise ValueError(msg) from exc


@dataclass(frozen=True)
class AlertEvent:
    """A transition: "opened", "updated" (condition changed) or "closed"."""

    kind: str
    window_end: float
    episode: AlertEpisode

    @property
    def condition(self) -> str:
        return self.episode.condition

    @property
    def furnace_id(self) -> str:
        return self.episode.furnace_id

    def to_dict(self) -> dict[str, str]:
        """Flat string fields, ready for `XADD` or a log line."""
        ep = self.episode
        return {
            "event": self.kind,
            "window_end": repr(self.window_end),
            "episode_id": ep.id,
            "furnace_id": ep.furnace_id,
            "condition": ep.condition,
            "opened_at": repr(ep.opened_at),
            "closed_at": "" if ep.closed_at is None else repr(ep.closed_at),
            "peak_score": repr(ep.peak_score),
            "raised_by": ep.raised_by,
        }


@dataclass(frozen=True)
class AlertState:
    """Alert state of one furnace; `AlertState(furnace_id)` is the state before any window."""

    furnace_id: str
    last_window_end: float | None = None
    recent: tuple[RecentWindow, ...] = ()  # the last n scored windows
    clean_streak: int = 0  # consecutive clean scored windows
    episode: AlertEpisode | None = None  # the open episode
    last_episode: AlertEpisode | None = None  # the last closed episode

    @classmethod
    def initial(cls, furnace_id: str) -> AlertState:
        """The state before any window (what an empty state hash means)."""
        return cls(furnace_id)

    def episode_dict(self) -> dict[str, Any] | None:
        """The open episode as a JSON-ready dict, None when no episode is open."""
        return None if self.episode is None else self.episode.to_dict()

    def to_dict(self) -> dict[str, str]:
        """String fields for `HSET furnace:{id}:state` (floats as exact `repr`)."""
        return {
            "version": _STATE_VERSION,
            "furnace_id": self.furnace_id,
            "last_window_end": "" if self.last_window_end is None else repr(self.last_window_end),
            "recent": json.dumps([_recent_dict(r) for r in self.recent]),
            "clean_streak": str(self.clean_streak),
            "episode": "" if self.episode is None else json.dumps(self.episode.to_dict()),
            "last_episode": (
                "" if self.last_episode is None else json.dumps(self.last_episode.to_dict())
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, str] | Mapping[bytes, bytes]) -> AlertState:
        """Inverse of `to_dict`; takes redis-py's `HGETALL` reply with str or bytes.

        Raises:
            ValueError: for an empty hash (start from `AlertState(furnace_id)` instead),
                another version, missing fields or malformed values.
        """
        d = {as_text(k): as_text(v) for k, v in data.items()}
        if not d:
            msg = "empty alert state: start from AlertState(furnace_id)"
            raise ValueError(msg)
        if d.get("version") != _STATE_VERSION:
            msg = f"alert state version {d.get('version')!r} is not {_STATE_VERSION!r}"
            raise ValueError(msg)
        try:
            recent = tuple(
                RecentWindow(
                    window_end=float(r["window_end"]),
                    abnormal=bool(r["abnormal"]),
                    score=float(r["score"]),
                    condition=str(r["condition"]),
                    modalities=str(r["modalities"]),
                )
                for r in json.loads(d["recent"])
            )
            return cls(
                furnace_id=d["furnace_id"],
                last_window_end=float(d["last_window_end"]) if d["last_window_end"] else None,
                recent=recent,
                clean_streak=int(d["clean_streak"]),
                episode=_episode(d["episode"]),
                last_episode=_episode(d["last_episode"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"invalid alert state for {d.get('furnace_id')!r}: {exc!r}"
            raise ValueError(msg) from exc


def next_state(
    state: AlertState, detection: Detection, policy: AlertPolicy | None = None
) -> tuple[AlertState, list[AlertEvent]]:
    """Apply one detection to a furnace's alert state.

    Args:
        state: the furnace's current state.
        detection: the newly scored window; one without deciding modalities (`modalities`
            empty) decides nothing, counting neither as abnormal nor as clean.
        policy: hysteresis parameters (defaults: open 3 of 4, close after 3 clean).

    Returns:
        (new state, events). A detection at or before `state.last_window_end` returns the
        state unchanged and no events (idempotent replays).

    Raises:
        ValueError: for another furnace's detection, a non-finite window end, a non-finite
            score of a decided window, or unknown `modalities`.
    """
    policy = policy or AlertPolicy()
    end, score = detection.window_end, detection.score
    if detection.furnace_id != state.furnace_id:
        msg = f"detection of {detection.furnace_id!r} applied to {state.furnace_id!r}"
        raise ValueError(msg)
    used = _deciding(detection.modalities)
    if not math.isfinite(end) or (used != "none" and not math.isfinite(score)):
        msg = f"window_end and score must be finite, got {end!r} and {score!r}"
        raise ValueError(msg)
    last = state.last_window_end
    if last is not None and end <= last:
        return state, []
    recent = state.recent
    if policy.max_gap_seconds is not None and last is not None:
        recent = () if end - last > policy.max_gap_seconds else recent
    if used == "none":  # nothing usable: neither abnormal nor clean
        return replace(state, last_window_end=end, recent=recent), []

    abnormal = detection.is_abnormal
    entry = RecentWindow(end, abnormal, score, detection.condition, used)
    recent = (*recent, entry)[-policy.n :]
    new = replace(
        state,
        last_window_end=end,
        recent=recent,
        clean_streak=0 if abnormal else state.clean_streak + 1,
    )
    ep = state.episode
    if ep is None:
        flagged = [r for r in recent if r.abnormal]
        if not abnormal or len(flagged) < policy.k:
            return new, []
        votes = _vote((), [r.condition for r in flagged])
        ep = AlertEpisode(
            id=episode_id(state.furnace_id, end),
            furnace_id=state.furnace_id,
            condition=_leader(votes, None),
            opened_at=end,
            peak_score=max(r.score for r in flagged),
            raised_by=_union(r.modalities for r in flagged),
            votes=votes,
        )
        return replace(new, episode=ep), [AlertEvent("opened", end, ep)]

    events: list[AlertEvent] = []
    if abnormal:
        votes = _vote(ep.votes, [detection.condition])
        updated = replace(ep, votes=votes, condition=_leader(votes, ep.condition))
        if updated.condition != ep.condition:
            events.append(AlertEvent("updated", end, updated))
        ep = updated
    ep = replace(ep, peak_score=max(ep.peak_score, score))
    if new.clean_streak >= policy.m:
        closed = replace(ep, closed_at=end)
        events.append(AlertEvent("closed", end, closed))
        return replace(new, episode=None, last_episode=closed, recent=()), events
    return replace(new, episode=ep), events


def episode_id(furnace_id: str, opened_at: float) -> str:
    """Deterministic episode id: furnace and opening window end in milliseconds."""
    return f"{furnace_id}-{round(opened_at * 1000)}"


def _vote(votes: tuple[tuple[str, int], ...], conditions: list[str]) -> tuple[tuple[str, int], ...]:
    """Add one vote per non-normal condition, keeping first-seen order."""
    counts = dict(votes)
    for c in conditions:
        if c != "normal":
            counts[c] = counts.get(c, 0) + 1
    return tuple(counts.items())


def _leader(votes: tuple[tuple[str, int], ...], current: str | None) -> str:
    """Most voted condition; the current one keeps ties, else the first seen wins."""
    if not votes:
        return current or CONDITION_UNKNOWN
    counts = dict(votes)
    top = max(counts.values())
    if current is not None and counts.get(current, 0) == top:
        return current
    return next(c for c, n in votes if n == top)


def _deciding(modalities: tuple[str, ...]) -> str:
    """Canonical "both", "current", "camera" or "none" from the deciding modality names."""
    if not set(modalities) <= {"current", "camera"}:
        msg = f"modalities must be 'current' and/or 'camera', got {modalities!r}"
        raise ValueError(msg)
    return _union(modalities) if modalities else "none"


def _union(modalities: Iterable[str]) -> str:
    """ "both" when the windows used both modalities between them, else the one they used."""
    used: set[str] = set()
    for m in modalities:
        used |= {"current", "camera"} if m == "both" else {m}
    return "both" if len(used) > 1 else used.pop()


def _recent_dict(r: RecentWindow) -> dict[str, Any]:
    return {
        "window_end": r.window_end,
        "abnormal": r.abnormal,
        "score": r.score,
        "condition": r.condition,
        "modalities": r.modalities,
    }


def _episode(text: str) -> AlertEpisode | None:
    return AlertEpisode.from_dict(json.loads(text)) if text else None
