"""HTTP request and response bodies (pydantic v2). Inputs forbid NaN/Inf and unknown fields and
bound every list (SERVING.md 5.2); shapes are checked against the manifest after parsing."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

STRICT = ConfigDict(allow_inf_nan=False, extra="forbid")
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
    health: dict[str, str]


BUNDLE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a plain folder name under models/


class ReloadIn(BaseModel):
    model_config = STRICT
    bundle: str = Field(pattern=BUNDLE_NAME, description="a folder under models/")
    fleet: bool = Field(
        False, description="also set model:desired, so every replica loads this bundle"
    )
