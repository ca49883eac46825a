"""Plain data passed between the service's parts: window geometry, assembled windows, health.

Everything here is numpy and the standard library, so the window assembler, the HTTP API,
the stream consumer and the ONNX engine share one vocabulary (docs/design/style.md 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

MODALITIES: Final = ("current", "camera")

# Per-modality health (the API reports these strings). Only "ok" is used for a decision;
# any other value means the other modality decides alone (or nothing, when both are bad).
HEALTH_OK: Final = "ok"
CURRENT_HEALTH: Final = ("ok", "missing", "stale", "nan", "stuck", "clipped")
CAMERA_HEALTH: Final = ("ok", "missing", "stale", "frozen", "dark", "occluded")


@dataclass(frozen=True)
class WindowSpec:
    """Window geometry; the bundle manifest records the values a model was trained with."""

    window_seconds: float = 16.0
    segments: int = 8  # T
    hop_seconds: float = 2.0
    rate_hz: float = 2.0  # current samples per second
    baseline_seconds: float = 120.0  # history before the window for the per-phase baseline
    long_baseline_seconds: float = 0.0  # > 0: a second, slow per-phase median (up to this)
    frame_px: int = 64  # the model sees frame_px x frame_px RGB
    camera_fps: float = 2.0  # nominal; frames are matched to segment ends within 0.5 / fps

    @property
    def lookback_seconds(self) -> float:
        """Current history the baselines read before a window's start."""
        return max(self.baseline_seconds, self.long_baseline_seconds)

    @property
    def baseline_width(self) -> int:
        """Columns of the current graph's baseline input: 3, or 6 with the long baseline."""
        return 6 if self.long_baseline_seconds > 0 else 3

    @property
    def segment_seconds(self) -> float:
        return self.window_seconds / self.segments

    @property
    def samples_per_segment(self) -> int:  # S
        return int(round(self.segment_seconds * self.rate_hz))

    @property
    def samples(self) -> int:  # T * S current samples per window
        return self.segments * self.samples_per_segment


@dataclass(frozen=True)
class CurrentWindow:
    """One window of three-phase current, as the current graph takes it."""

    x: NDArray[np.float32]  # (T, S, 3) A
    baseline: NDArray[np.float32]  # (3,) A, per-phase median of the history before the window;
    # (6,) with the spec's long baseline appended
    health: str = HEALTH_OK


@dataclass(frozen=True)
class CameraWindow:
    """One window of camera frames: the last frame at or before each segment end."""

    frames: NDArray[np.uint8]  # (T, frame_px, frame_px, 3) RGB
    health: str = HEALTH_OK


@dataclass(frozen=True)
class Window:
    """A window of one furnace ending at `end` (sensor time, Unix seconds).

    A modality is None when it had no data at all in the window (health "missing"); when it
    is present with a health other than "ok", the engine does not use it for the decision.
    """

    furnace_id: str
    end: float
    current: CurrentWindow | None = None
    camera: CameraWindow | None = None
    extra_health: dict[str, str] = field(default_factory=dict)  # modality -> health if None

    def health(self, modality: str) -> str:
        part = self.current if modality == "current" else self.camera
        if part is not None:
            return part.health
        return self.extra_health.get(modality, "missing")

    def usable(self, modality: str) -> bool:
        return self.health(modality) == HEALTH_OK
