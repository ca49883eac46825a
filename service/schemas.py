"""HTTP request and response bodies (pydantic v2). Inputs forbid NaN/Inf and unknown fields and
bound every list (docs/design/serving.md 5.2); shapes are checked against the manifest after
parsing."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# strict: no coercion ("2" is not a number, true is not 1; issue 14 item 8); ints stay floats
STRICT = ConfigDict(allow_inf_nan=False, extra="forbid", strict=True)
Phase3 = Annotated[list[float], Field(min_length=3, max_length=3)]
MAX_SAMPLES = 4096  # per request; the manifest's window + baseline is far below
MAX_IMAGE_CHARS = 4_000_000  # base64 characters per frame (~3 MB of image)


class CurrentIn(BaseModel):
    """Three-phase current in amperes at `rate_hz`, oldest first.

    Give at least one window of samples (window_seconds x rate_hz, e.g. 32). Extra samples
    before the window (up to baseline_seconds, or long_baseline_seconds when the model has a
    long baseline) are used for the per-phase baseline(s); without
    them, give `baseline_a`, or the window's own median is used (and the response says so).
    """

    model_config = STRICT
    start: float = Field(gt=0, description="sensor time of the first sample, Unix seconds")
    rate_hz: float = Field(2.0, gt=0, le=1000)
    samples: list[Phase3] = Field(min_length=1, max_length=MAX_SAMPLES)
    baseline_a: Phase3 | None = None


class FrameIn(BaseModel):
    model_config = STRICT
    ts: float = Field(gt=0, description="sensor time of the frame, Unix seconds")
    image: str = Field(min_length=8, max_length=MAX_IMAGE_CHARS, description="base64 PNG/JPEG")


class CameraIn(BaseModel):
    """Camera frames of any size (resized to the model's frame size), oldest first."""

    model_config = STRICT
    frames: list[FrameIn] = Field(min_length=1)


class WindowIn(BaseModel):
    """One window; either modality may be absent (then the other decides alone)."""

    model_config = STRICT
    current: CurrentIn | None = None
    camera: CameraIn | None = None
    window_end: float | None = Field(
        None, gt=0, description="default: the last current sample's (else last frame's) time"
    )


class ModalityOut(BaseModel):
    codes: list[int]
    score: float
    probabilities: dict[str, float]
    segment_scores: list[float]
    window_score: float | None = Field(
        None,
        description="with a memory head (the manifest's `memory`): the window graph's own "
        "score; `score` and `probabilities` are then the memory head's",
    )
    window_probabilities: dict[str, float] | None = Field(
        None,
        description="with a memory head: the window graph's own probabilities (what the "
        "memory head corrected)",
    )
    raw_score: float | None = Field(
        None,
        description="with per-furnace adaptation (the manifest's `adaptation`): the score "
        "before the furnace's standing bias was removed; `score` is the adapted one",
    )


class EpisodeOut(BaseModel):
    id: str
    condition: str
    opened_at: float
    closed_at: float | None
    peak_score: float
    raised_by: str


class DetectionOut(BaseModel):
    furnace_id: str
    window_end: float
    condition: str
    probabilities: dict[str, float]
    score: float | None
    threshold: float | None
    is_abnormal: bool
    modalities: list[str]
    decided_by: str
    lead: str | None = Field(
        None,
        description="max_ratio fusion: the modality whose score ratio decided the window",
    )
    health: dict[str, str]
    codes: dict[str, list[int]]
    code_agreement: float | None
    segment_scores: dict[str, list[float]]
    per_modality: dict[str, ModalityOut]
    model_version: str
    baseline: str | None = None
    state_applied: bool | None = None
    episode: EpisodeOut | None = None


class FurnaceState(BaseModel):
    furnace_id: str
    last_window_end: float | None
    detection: DetectionOut | None
    episode: EpisodeOut | None
    health: dict[str, str] = Field(
        description="per modality: the last window's health, or `no_data` for every modality "
        "once that window is older than FURNACE_NO_DATA_SECONDS"
    )


class EpisodeRecord(BaseModel):
    """An open episode as stored in the state hash (`AlertEpisode.to_dict`)."""

    id: str
    furnace_id: str
    condition: str
    opened_at: float
    closed_at: float | None
    peak_score: float
    raised_by: str
    votes: list[tuple[str, int]] = Field(description="[condition, abnormal windows] pairs")


class FurnaceSummary(BaseModel):
    furnace_id: str
    read_by_this_replica: bool
    last_window_end: float | None
    condition: str | None
    score: float | None
    health: dict[str, str] = Field(
        description="per modality: the last window's health, or `no_data` for every modality "
        "once that window is older than FURNACE_NO_DATA_SECONDS"
    )
    episode: EpisodeRecord | None


class FurnacesOut(BaseModel):
    """One page of furnaces, by id (`GET /v1/furnaces?limit=&cursor=`)."""

    furnaces: list[FurnaceSummary]
    next_cursor: str | None = Field(
        None, description="pass as `cursor` for the next page; null on the last page"
    )


class ModelOut(BaseModel):
    """A summary of the served bundle's manifest (raw manifest sections passed through)."""

    bundle: str = Field(description="the bundle folder name this replica serves")
    signed_by: str | None = Field(
        description="id of the trusted key whose signature was checked; null for an unsigned "
        "bundle (FURNACE_ALLOW_UNSIGNED_BUNDLES)"
    )
    desired: str | None = Field(
        description="the `model:desired` key: the bundle every replica is asked to serve "
        "(null when unset)"
    )
    name: str
    model_version: str
    format_version: int
    bundle_sha256: str
    provider: str
    created_at: Any
    window: dict[str, Any] | None
    class_names: list[str]
    codebook_size: int
    head: str = Field(description="the head's name, or current=NAME,camera=NAME")
    heads: dict[str, str] = Field(description="modality -> the head its graph carries")
    thresholds: dict[str, Any] | None
    alert_policy: dict[str, Any] = Field(
        description="the alert policy in effect (k, n, m) and the bundle's calibrated one "
        "(`bundle`, null when the manifest has none); FURNACE_ALERT_K/N/M override the bundle"
    )
    metrics: Any
    training: dict[str, Any]
    memory: dict[str, Any] | None = Field(
        None,
        description="the manifest's `memory` section (memory heads: slots, stride, graphs, "
        "validation; no file-system paths), null when the bundle has none",
    )
    adaptation: dict[str, Any] | None = Field(
        None,
        description="the manifest's `adaptation` section (per-furnace score adaptation: "
        "window, quantile, minimum history, per-modality reference logits), null when the "
        "bundle has none",
    )


class ReloadOut(BaseModel):
    previous: str = Field(description="the model version served before")
    model_version: str
    bundle: str = Field(description="the bundle folder loaded")
    fleet: bool


class HealthOut(BaseModel):
    status: str


class ReadyChecks(BaseModel):
    """Each check; a key is absent (not null) when it does not apply."""

    model: bool
    draining: bool
    redis: bool
    redis_error: str | None = None
    lease: bool | None = None
    consumer: bool | None = None
    streams: int | None = None
    consumer_error: str | None = None
    error: str | None = None


class ReadyOut(BaseModel):
    ready: bool
    failing: list[str]
    checks: ReadyChecks


BUNDLE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a plain folder name under models/


class ReloadIn(BaseModel):
    model_config = STRICT
    bundle: str = Field(pattern=BUNDLE_NAME, description="a folder under models/")
    fleet: bool = Field(
        False, description="also set model:desired, so every replica loads this bundle"
    )
