"""A POSTed window -> the same `Window` the stream path builds (service/windows.py).

The request's samples and frames are fed to a fresh `WindowAssembler` and the window at
`window_end` is cut exactly as for Redis entries, so a window posted with the same data gives
the same codes and scores. What HTTP adds: shape, rate and timestamp checks with messages that
say what to fix, and the baseline when the request carries no history (given `baseline_a`, or
the window's own median as a last resort; the response says which).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from service.entries import plausible_ts
from service.health import DEFAULT_HEALTH, current_health
from service.images import ImageError, base64_image_bytes, decode_image, image_size
from service.schemas import CurrentIn, FrameIn, WindowIn
from service.settings import Settings
from service.types import CurrentWindow, Window, WindowSpec
from service.windows import WindowAssembler

NO_MODALITY = "the window has neither current nor camera: send at least one modality"


class RequestError(ValueError):
    """A window that cannot be scored; `reason` labels the rejection metric."""

    def __init__(self, message: str, reason: str = "shape") -> None:
        super().__init__(message)
        self.reason = reason


def _check_time(name: str, ts: float, received_at: float, ahead: float) -> None:
    if math.isfinite(ts) and ts > received_at + ahead:
        msg = (
            f"{name} {ts!r} is {ts - received_at:.1f} s in the future; sensor time may lead the "
            f"service's clock by {ahead:g} s at most (FURNACE_MAX_FUTURE_SKEW_SECONDS)"
        )
        raise RequestError(msg, "timestamp")
    if not plausible_ts(ts, received_at, ahead):
        msg = f"{name} {ts!r} is not a plausible sensor time (Unix seconds, after 2000-01-01)"
        raise RequestError(msg, "timestamp")


def window_from_request(
    body: WindowIn,
    furnace_id: str,
    spec: WindowSpec,
    settings: Settings,
    *,
    received_at: float,
) -> tuple[Window, dict[str, Any]]:
    """Build the window; raises RequestError (422/413) or ImageError (422)."""
    if body.current is None and body.camera is None:
        raise RequestError(NO_MODALITY)
    ahead = settings.max_future_skew_seconds  # no posted time may lead the clock further
    asm = WindowAssembler(
        furnace_id,
        spec,
        grace_seconds=0.0,
        staleness_seconds=settings.staleness_seconds,
        max_samples=max(spec.samples, 16384),
    )
    notes: dict[str, Any] = {}
    end = body.window_end
    history = int(round(spec.lookback_seconds * spec.rate_hz))
    if body.current is not None:
        c = body.current
        n = len(c.samples)
        if abs(c.rate_hz - spec.rate_hz) > 1e-9:
            msg = f"current.rate_hz must be the model's {spec.rate_hz:g} Hz, got {c.rate_hz:g}"
            raise RequestError(msg)
        if n < spec.samples:
            msg = f"current needs at least {spec.samples} samples ({spec.window_seconds:g} s at "
            msg += f"{spec.rate_hz:g} Hz), got {n}"
            raise RequestError(msg)
        if n > spec.samples + history:
            msg = f"current has {n} samples; at most {spec.samples + history} (the window plus "
            msg += f"{spec.lookback_seconds:g} s of baseline history) are used"
            raise RequestError(msg, "too_large")
        _check_time("current.start", c.start, received_at, ahead)
        last = c.start + (n - 1) / c.rate_hz
        _check_time("the last current sample's time", last, received_at, ahead)
        ts = c.start + np.arange(n) / c.rate_hz
        for t, (a, b, cc) in zip(ts.tolist(), c.samples, strict=True):
            asm.add_current(t, a, b, cc)
        end = end if end is not None else float(ts[-1])
    if body.camera is not None:
        frames = body.camera.frames
        if len(frames) > settings.max_frames:
            msg = f"{len(frames)} camera frames; at most {settings.max_frames} per window"
            raise RequestError(msg, "too_large")
        times = [f.ts for f in frames]
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            msg = "camera frame timestamps must strictly increase (oldest first)"
            raise RequestError(msg, "timestamp")
        for i, f in enumerate(frames):
            _check_time(f"camera.frames[{i}].ts", f.ts, received_at, ahead)
        for f, image in zip(frames, _decode_frames(frames, spec, settings), strict=True):
            asm.add_frame(f.ts, image)
        end = end if end is not None else times[-1]
    if end is None:  # not reached: one modality is present and set it
        raise RequestError(NO_MODALITY)
    _check_time("window_end", end, received_at, ahead)
    window = asm.window_at(end)
    if window is None:
        msg = f"no samples or frames fall inside the window ending at {end!r}"
        raise RequestError(msg, "timestamp")
    if window.current is not None and body.current is not None:
        window, notes["baseline"] = _baseline(window, window.current, body.current, spec)
    return window, notes


def _decode_frames(frames: list[FrameIn], spec: WindowSpec, settings: Settings) -> list[np.ndarray]:
    """Every frame's pixels, after the request's pixel budget was checked on the headers of
    all of them: no pixel is decoded for a request over FURNACE_MAX_REQUEST_PIXELS (issue 14
    item 3: 64 frames of 4096x4096 held a worker for 24-47 s).

    Raises:
        ImageError: a frame that is not an image, over a limit, or corrupt; or the frames
            together over the request's pixel budget (reason "too_large").
    """
    blobs, total = [], 0
    for i, f in enumerate(frames):
        try:
            data = base64_image_bytes(f.image)
            width, height = image_size(data, max_pixels=settings.max_image_pixels)
        except ImageError as exc:
            msg = f"camera.frames[{i}]: {exc}"
            raise ImageError(msg, reason=exc.reason) from exc
        total += width * height
        if total > settings.max_request_pixels:
            msg = f"camera frames 0..{i} already hold {total} pixels; at most "
            msg += f"{settings.max_request_pixels} per request (FURNACE_MAX_REQUEST_PIXELS): "
            msg += f"send smaller frames (the model uses {spec.frame_px}x{spec.frame_px})"
            raise ImageError(msg, reason="too_large")
        blobs.append(data)
    out = []
    for i, data in enumerate(blobs):
        try:
            out.append(
                decode_image(data, frame_px=spec.frame_px, max_pixels=settings.max_image_pixels)
            )
        except ImageError as exc:
            msg = f"camera.frames[{i}]: {exc}"
            raise ImageError(msg, reason=exc.reason) from exc
    return out


def _baseline(
    window: Window, part: CurrentWindow, current: CurrentIn, spec: WindowSpec
) -> tuple[Window, str]:
    """Keep the history baseline when the request carried enough history; else use the given
    `baseline_a`, else the window's own median (a weaker reference: level shifts vanish).
    A model with a long baseline gets the same three values there (no slow drift seen)."""
    covered = len(current.samples) >= spec.samples + int(
        round(spec.baseline_seconds * spec.rate_hz)
    )
    if covered and np.isfinite(part.baseline).all():
        return window, "history"
    if current.baseline_a is not None:
        baseline = np.asarray(current.baseline_a, np.float32)
        source = "given"
    else:
        with np.errstate(all="ignore"):
            baseline = np.nanmedian(part.x.reshape(-1, 3), axis=0).astype(np.float32)
        source = "window_median"
    if spec.baseline_width == 6:
        baseline = np.concatenate([baseline, baseline])
    health = part.health
    if health == "missing" and not any(math.isnan(v) for v in baseline.tolist()):
        health = current_health(part.x.reshape(-1, 3), expected=spec.samples, config=DEFAULT_HEALTH)
    return replace(window, current=CurrentWindow(part.x, baseline, health)), source
