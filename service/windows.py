"""Online window assembly for one furnace: the same windows `training.data.make_windows` cuts.

Samples and frames arrive in any order and are placed by sensor timestamp. Window ends lie on
multiples of `hop_seconds` (absolute sensor time). The window ending at `end` covers
(end - window_seconds, end] and closes once the newest timestamp seen on ANY modality reaches
`end + grace_seconds`, so a dead camera never holds current windows back, nor the reverse.
Each window is emitted once; an entry at or before the last closed end is "late": it is
counted and still kept for the windows that follow (as offline windowing would use it), but
a closed window is never rebuilt.

Construction matches `make_windows` and `_baseline` array for array (tests compare them): per
segment the last S samples at or before the segment end; the baseline is the per-phase
`nanmedian` of the last baseline_seconds * rate_hz samples in (start - baseline_seconds, start]
(NaN when none is finite), followed by the same over `long_baseline_seconds` when the spec
has one (all the buffered history there is, when less); each segment's frame is the frame
nearest its end within 0.5 / camera_fps (ties to the earlier frame), an all-zero frame when
none is. Offline, a window is skipped until the recording holds `baseline_seconds` of current
before it; online that window is emitted with current health "missing".

Health, per modality (strings of `service.types`; content rules in `service.health`):
  current  None part: "stale" when the stream delivered before but its newest sample at or
           before the end is older than `staleness_seconds`, else "missing" (not started yet).
           Else: "stale" (newest sample at or before the end older than `staleness_seconds`),
           "missing" (a segment with fewer than S samples), `current_health` of the T * S
           samples, and finally "missing" when the baseline is not finite or its history
           does not reach back `baseline_seconds`.
  camera   None part: as for current, when no segment found a frame. Else: "stale", "missing"
           (a segment without a frame), then `camera_health` of the T segment frames.
A segment with more than S samples (timestamp jitter) keeps the last S, as offline does.
Windows with dropped packets differ from offline arrays (the faulted offline recording keeps
a dropped sample in place as NaN, online it is simply absent); both are unusable ("missing").
"""

from __future__ import annotations

import bisect
import math

import numpy as np
from numpy.typing import NDArray

from service.health import (
    DEFAULT_HEALTH,
    HealthConfig,
    camera_health,
    clip_continues,
    current_health,
)
from service.types import CameraWindow, CurrentWindow, Window, WindowSpec

_EPS = 1e-6  # seconds; timestamps of one grid compare equal within it (as training.data)
F64 = NDArray[np.float64]


class WindowAssembler:
    """Buffers one furnace's current samples and frames and closes its windows.

    Not thread-safe: one reader task owns it (docs/design/serving.md 1.2). Memory is bounded:
    entries older than the next window's start minus its baseline (frames: minus the matching
    tolerance) and a margin are dropped, and at most `max_samples` / `max_frames` are kept.

    Attributes:
        late: modality -> entries at or before the last closed window end (docs/design/serving.md
        1.2). duplicates: modality -> entries ignored because their timestamp was already buffered.
        dropped: modality -> entries evicted by the `max_samples` / `max_frames` caps.
        skipped_windows: windows closed without data in either modality (never emitted).
    """

    def __init__(
        self,
        furnace_id: str,
        spec: WindowSpec,
        *,
        grace_seconds: float = 1.0,
        staleness_seconds: float = 3.0,
        health: HealthConfig = DEFAULT_HEALTH,
        max_samples: int = 16384,
        max_frames: int = 1024,
        last_closed_end: float | None = None,
    ) -> None:
        """Create an empty assembler.

        Args:
            furnace_id: the furnace (validated by the caller, `service.shard`).
            spec: window geometry from the bundle manifest.
            grace_seconds: how far past a window end the newest timestamp must be before
                the window closes; below 0.5 / camera_fps a late-matched frame can be missed.
            staleness_seconds: a modality whose newest sample at or before the end is older than
                this is "stale".
            health: health thresholds.
            max_samples: cap on buffered current samples.
            max_frames: cap on buffered frames.
            last_closed_end: resume after this window end (the alert state's last applied
                window): no window at or before it is emitted again. History fed to rebuild
                the buffer (`history_seconds` before it) then comes back "late": expected
                during a rebuild, not worth counting as late entries.

        Raises:
            ValueError: for a negative grace or staleness, tiny caps, a segment that does
                not hold a whole number of samples, or a resume point off the hop grid.
        """
        seg = spec.segment_seconds * spec.rate_hz
        if abs(seg - spec.samples_per_segment) > 1e-9 or spec.samples_per_segment < 1:
            msg = f"window_seconds / segments * rate_hz must be a whole number >= 1, got {seg}"
            raise ValueError(msg)
        if grace_seconds < 0 or staleness_seconds <= 0 or spec.hop_seconds <= 0:
            msg = "grace_seconds must be >= 0, staleness_seconds and hop_seconds > 0"
            raise ValueError(msg)
        if max_samples < spec.samples or max_frames < spec.segments:
            msg = f"max_samples >= {spec.samples} and max_frames >= {spec.segments} needed"
            raise ValueError(msg)
        self.furnace_id = furnace_id
        self.spec = spec
        self.grace_seconds = grace_seconds
        self.staleness_seconds = staleness_seconds
        self.health = health
        self.max_samples = max_samples
        self.max_frames = max_frames
        self.tolerance = 0.5 / spec.camera_fps + _EPS
        self._margin = spec.hop_seconds + grace_seconds + 1.0
        self._t: list[float] = []  # sorted current timestamps
        self._v: list[tuple[float, float, float]] = []
        self._tf: list[float] = []  # sorted frame timestamps
        self._frames: list[NDArray[np.uint8]] = []
        self._newest = -math.inf
        self._origin = math.inf  # earliest timestamp seen before the first window closed
        self._first = {"current": math.inf, "camera": math.inf}  # earliest ever buffered
        self._next_k: int | None = None  # next window end = _next_k * hop_seconds
        self._last_closed_end: float | None = None
        self._clipped_end: float | None = None  # end of the last window with clipped current
        if last_closed_end is not None:
            self.last_closed_end = last_closed_end
        self.late = {"current": 0, "camera": 0}
        self.duplicates = {"current": 0, "camera": 0}
        self.dropped = {"current": 0, "camera": 0}
        self.skipped_windows = 0

    @property
    def last_closed_end(self) -> float | None:
        """End of the last closed window (None before the first one)."""
        return self._last_closed_end

    @last_closed_end.setter
    def last_closed_end(self, end: float) -> None:
        """Resume after `end` (e.g. the alert state's last applied window, docs/design/serving.md
        2.3): no window at or before it is emitted. Never moves backwards.

        Raises:
            ValueError: when `end` is not a multiple of the hop.
        """
        hop = self.spec.hop_seconds
        k = round(end / hop)
        if not math.isfinite(end) or abs(k * hop - end) > 1e-3:
            msg = f"last_closed_end {end} is not a multiple of the hop ({hop} s)"
            raise ValueError(msg)
        if self._next_k is None or k + 1 > self._next_k:
            self._next_k, self._last_closed_end = k + 1, k * hop

    @property
    def history_seconds(self) -> float:
        """How far before the next window end a rebuild must read: window, baseline history
        and margin (docs/design/serving.md 2.3 names only window + grace; the baseline needs
        more)."""
        s = self.spec
        return s.window_seconds + s.lookback_seconds + self._margin

    @property
    def newest(self) -> float:
        """The newest timestamp seen on any modality (-inf before the first entry)."""
        return self._newest

    def add_current(self, ts: float, a: float, b: float, c: float) -> str:
        """Buffer one current sample (non-finite values are kept: they are health, not poison).

        Args:
            ts: sensor time, Unix seconds.
            a, b, c: phase currents (A).

        Returns:
            "added", "duplicate" (timestamp already buffered: ignored) or "late" (at or before
            the last closed window end: counted, kept unless older than the buffer).

        Raises:
            ValueError: for a non-finite timestamp.
        """
        _check_ts(ts)
        if ts <= self._horizon(self.spec.lookback_seconds):
            self.late["current"] += 1
            return "late"
        i = bisect.bisect_left(self._t, ts)
        if i < len(self._t) and self._t[i] == ts:
            self.duplicates["current"] += 1
            return "duplicate"
        self._t.insert(i, ts)
        self._v.insert(i, (float(a), float(b), float(c)))
        if len(self._t) > self.max_samples:
            del self._t[0], self._v[0]
            self.dropped["current"] += 1
        return self._note("current", ts)

    def add_frame(self, ts: float, frame: NDArray[np.uint8]) -> str:
        """Buffer one decoded frame (kept by reference: do not modify it afterwards).

        Args:
            ts: sensor time, Unix seconds.
            frame: (frame_px, frame_px, 3) uint8 RGB (`service.images.decode_image`).

        Returns:
            "added", "duplicate" or "late", as `add_current`.

        Raises:
            ValueError: for a non-finite timestamp or a frame of another shape or dtype.
        """
        _check_ts(ts)
        px = self.spec.frame_px
        if frame.shape != (px, px, 3) or frame.dtype != np.uint8:
            msg = f"expected a ({px}, {px}, 3) uint8 frame, got {frame.shape} {frame.dtype}"
            raise ValueError(msg)
        if ts <= self._horizon(self.tolerance):
            self.late["camera"] += 1
            return "late"
        i = bisect.bisect_left(self._tf, ts)
        if i < len(self._tf) and self._tf[i] == ts:
            self.duplicates["camera"] += 1
            return "duplicate"
        self._tf.insert(i, ts)
        self._frames.insert(i, frame)
        if len(self._tf) > self.max_frames:
            del self._tf[0], self._frames[0]
            self.dropped["camera"] += 1
        return self._note("camera", ts)

    def pop_closed(self, until: float | None = None, limit: float | None = None) -> list[Window]:
        """Close and return every window whose end + grace the newest timestamp has reached.

        Args:
            until: also treat this time as seen (e.g. wall clock minus the allowed lag), so
                windows close while both streams are silent.
            limit: treat no time after this as seen, whatever was buffered: a reader catching
                up on a backlog passes the newest timestamp of a stream that has more entries
                waiting, so the other stream, further ahead, cannot close windows whose
                entries of the lagging stream are still unread.

        Returns:
            The newly closed windows, oldest first; windows without data in either modality
            are skipped and counted in `skipped_windows`.
        """
        clock = max(self._newest, -math.inf if until is None else until)
        if limit is not None:
            clock = min(clock, limit)
        s = self.spec
        if self._next_k is None:
            if not math.isfinite(self._origin):
                return []
            first = self._origin + s.window_seconds - 1.0 / s.rate_hz
            self._next_k = math.ceil((first - _EPS) / s.hop_seconds)
        t = np.asarray(self._t, dtype=np.float64)  # (N,)
        cur = np.asarray(self._v, dtype=np.float32).reshape(-1, 3)  # (N, 3)
        tf = np.asarray(self._tf, dtype=np.float64)  # (F,)
        out: list[Window] = []
        while (end := self._next_k * s.hop_seconds) + self.grace_seconds <= clock + _EPS:
            window = self._build(end, t, cur, tf)
            self._last_closed_end = end
            self._next_k += 1
            if window is not None:
                out.append(window)
                continue
            self.skipped_windows += 1
            # Jump over the following windows that cannot hold data either: none before the
            # next sample after `end`, or the next frame after this window's start.
            nxt = clock
            for x, after in ((t, end), (tf, end - s.window_seconds - self.tolerance)):
                i = int(np.searchsorted(x, after, side="right"))
                nxt = min(nxt, float(x[i])) if i < x.size else nxt
            k = math.ceil((nxt - self.tolerance - _EPS) / s.hop_seconds) - 1  # last empty one
            k = min(k, math.floor((clock - self.grace_seconds + _EPS) / s.hop_seconds))
            if k >= self._next_k:
                self.skipped_windows += k - self._next_k + 1
                self._last_closed_end = k * s.hop_seconds
                self._next_k = k + 1
        self._prune()
        return out

    def window_at(self, end: float) -> Window | None:
        """The window ending at `end` from what is buffered, closing nothing (HTTP windows:
        the same construction as the stream path, at any end time)."""
        _check_ts(end)
        t = np.asarray(self._t, dtype=np.float64)
        cur = np.asarray(self._v, dtype=np.float32).reshape(-1, 3)
        tf = np.asarray(self._tf, dtype=np.float64)
        return self._build(end, t, cur, tf)

    def _build(self, end: float, t: F64, cur: NDArray[np.float32], tf: F64) -> Window | None:
        """The window ending at `end`, or None when neither modality has data in it."""
        s = self.spec
        steps = np.arange(s.segments + 1, dtype=np.float64)
        edges: F64 = end - s.window_seconds + s.segment_seconds * steps  # (T+1,)
        extra: dict[str, str] = {}
        current = self._current_part(end, edges, t, cur)
        if current is None:
            extra["current"] = self._absent("current", end, t)
        camera = self._camera_part(end, edges, tf)
        if camera is None:
            extra["camera"] = self._absent("camera", end, tf)
        if current is None and camera is None:
            return None
        return Window(self.furnace_id, end, current=current, camera=camera, extra_health=extra)

    def _current_part(
        self, end: float, edges: F64, t: F64, cur: NDArray[np.float32]
    ) -> CurrentWindow | None:
        """Current part of the window (None without samples in it); health as documented."""
        s, S = self.spec, self.spec.samples_per_segment
        pos = np.searchsorted(t, edges + _EPS, side="right")  # (T+1,) samples <= edge
        if pos[-1] == pos[0]:
            return None
        idx = np.clip(pos[1:, None] - S + np.arange(S), 0, len(t) - 1)  # (T, S)
        x = cur[idx]  # (T, S, 3)
        start = end - s.window_seconds
        baseline = _baseline(t, cur, start, s.baseline_seconds, s.rate_hz)  # (3,)
        if s.long_baseline_seconds > 0:
            slow = _baseline(t, cur, start, s.long_baseline_seconds, s.rate_hz)  # (3,)
            baseline = np.concatenate([baseline, slow])  # (6,)
        if end - t[pos[-1] - 1] > self.staleness_seconds:
            health = "stale"
        elif (np.diff(pos) < S).any():
            health = "missing"
        else:
            flat = x.reshape(-1, 3)
            health = current_health(flat, expected=s.samples, config=self.health)
            after_clip = self._clipped_end is not None and 0 < end - self._clipped_end <= (
                s.hop_seconds + _EPS
            )
            if health == "ok" and after_clip and clip_continues(flat, self.health):
                health = "clipped"  # a clipped fault that ends inside this window
            if health == "clipped":
                self._clipped_end = end
            first = self._first["current"]
            covered = first <= start - s.baseline_seconds + 1.0 / s.rate_hz + _EPS
            if health == "ok" and not (covered and np.isfinite(baseline).all()):
                health = "missing"
        return CurrentWindow(x=x, baseline=baseline, health=health)

    def _camera_part(self, end: float, edges: F64, tf: F64) -> CameraWindow | None:
        if tf.size == 0:
            return None
        seg_end = edges[1:]  # (T,)
        j = np.searchsorted(tf, seg_end)
        jl, jr = np.clip(j - 1, 0, len(tf) - 1), np.clip(j, 0, len(tf) - 1)
        pick = np.where(np.abs(tf[jl] - seg_end) <= np.abs(tf[jr] - seg_end), jl, jr)  # (T,)
        ok = np.abs(tf[pick] - seg_end) <= self.tolerance
        if not ok.any():
            return None
        px = self.spec.frame_px
        frames = np.zeros((len(seg_end), px, px, 3), np.uint8)  # (T, H, W, 3)
        for i in np.flatnonzero(ok):
            frames[i] = self._frames[int(pick[i])]
        newest = int(np.searchsorted(tf, end + _EPS, side="right")) - 1
        if newest < 0 or end - tf[newest] > self.staleness_seconds:
            health = "stale"
        elif not ok.all():
            health = "missing"
        else:
            health = camera_health(frames, expected=len(seg_end), config=self.health)
        return CameraWindow(frames=frames, health=health)

    def _absent(self, modality: str, end: float, ts: F64) -> str:
        """Health of a modality with no data in the window: "stale" when its stream delivered
        before and its newest entry at or before `end` is older than `staleness_seconds`."""
        if self._first[modality] > end + _EPS:
            return "missing"  # nothing yet: the stream has not started (or never will)
        i = int(np.searchsorted(ts, end + _EPS, side="right")) - 1
        return "stale" if i < 0 or end - ts[i] > self.staleness_seconds else "missing"

    def _note(self, modality: str, ts: float) -> str:
        """Book-keeping after an insert; "late" when the entry belongs to a closed window."""
        self._first[modality] = min(self._first[modality], ts)
        self._newest = max(self._newest, ts)
        if self._next_k is None:
            self._origin = min(self._origin, ts)
        if self._last_closed_end is not None and ts <= self._last_closed_end + _EPS:
            self.late[modality] += 1
            return "late"
        return "added"

    def _horizon(self, lookback: float) -> float:
        """Entries at or before this time can no longer reach an open window."""
        if self._next_k is None:
            return -math.inf
        start = self._next_k * self.spec.hop_seconds - self.spec.window_seconds
        return start - lookback - self._margin

    def _prune(self) -> None:
        cut = bisect.bisect_right(self._t, self._horizon(self.spec.lookback_seconds))
        del self._t[:cut], self._v[:cut]
        cut = bisect.bisect_right(self._tf, self._horizon(self.tolerance))
        del self._tf[:cut], self._frames[:cut]


def _check_ts(ts: float) -> None:
    if not math.isfinite(ts):
        msg = f"timestamp must be finite, got {ts!r}"
        raise ValueError(msg)


def _baseline(
    t: F64,
    current: NDArray[np.float32],
    start: float,
    baseline_s: float,
    rate_hz: float,
) -> NDArray[np.float32]:
    """(3,) per-phase nanmedian of the last baseline_s * rate_hz samples in (start - baseline_s,
    start], as `training.data.windows._baseline` computes it for one window; NaN when none is
    finite."""
    n = int(round(baseline_s * rate_hz))
    if len(t) == 0 or n == 0:
        return np.full(3, np.nan, np.float32)
    lo = int(np.searchsorted(t, start - baseline_s + _EPS, side="right"))
    hi = int(np.searchsorted(t, start + _EPS, side="right"))
    idx = hi - n + np.arange(n)  # (n,) the last n samples before the window
    vals = np.where((idx >= lo)[:, None], current[np.clip(idx, 0, None)], np.nan)  # (n, 3)
    out = np.full(3, np.nan, np.float32)
    some = np.isfinite(vals).any(axis=0)  # all-NaN phases stay NaN (no warning, no filter)
    if some.any():
        out[some] = np.nanmedian(vals[:, some], axis=0)
    return out
