"""The decision for one window: the one internal form the engine makes, the alert state machine
reads and the store writes (docs/design/serving.md 1.4-1.5).

`Detection.to_dict()` is the JSON shape every consumer sees (the HTTP response, the
detections stream's `data` field, the state hash's `detection`); `Detection.from_dict()` parses
that stored form back, including records written before `lead` existed. The HTTP wire model
is `service.schemas.DetectionOut`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModalityResult:
    """One modality's view of a window. With a memory head (docs/service.md "Memory"),
    `probs` and `score` are the memory graph's and `window_score` / `window_probs` keep the
    window graph's own (diagnostics); without one they are None. With per-furnace adaptation
    (docs/service.md "Per-furnace adaptation") `score` is the adapted score and `raw_score`
    the score before it (what a restart rebuilds the furnace's history from); else None."""

    codes: list[int]
    probs: list[float]
    score: float
    segment_scores: list[float]
    window_score: float | None = None
    window_probs: list[float] | None = None
    raw_score: float | None = None


@dataclass(frozen=True)
class Detection:
    """The decision for one window.

    `modalities` are the modalities that decided; `()` means none was usable (`score` and
    `threshold` are NaN, `condition` "unknown"): such a window decides nothing, counting
    neither as abnormal nor as clean for alert episodes.
    """

    furnace_id: str
    window_end: float  # sensor time, Unix seconds
    condition: str
    probabilities: dict[str, float]
    score: float  # higher is more anomalous; NaN when no modality was usable
    threshold: float
    is_abnormal: bool
    modalities: tuple[str, ...]  # the modalities that decided; () when none was usable
    health: dict[str, str]
    per_modality: dict[str, ModalityResult] = field(default_factory=dict)
    code_agreement: float | None = None
    lead: str = ""  # the modality whose view decided (max_ratio) or "" (averaged / none)
    model_version: str = ""
    class_names: tuple[str, ...] = ()  # the order of every probability vector

    @property
    def decided_by(self) -> str:
        """ "both", "current", "camera" or "none"."""
        if len(self.modalities) == 2:
            return "both"
        return self.modalities[0] if self.modalities else "none"

    @property
    def decided(self) -> bool:
        """A modality decided the window with a finite score."""
        return bool(self.modalities) and math.isfinite(self.score)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of a detection (HTTP response, detections stream, state hash)."""
        return {
            "furnace_id": self.furnace_id,
            "window_end": self.window_end,
            "condition": self.condition,
            "probabilities": self.probabilities,
            "score": _finite(self.score),
            "threshold": _finite(self.threshold),
            "is_abnormal": self.is_abnormal,
            "modalities": list(self.modalities),
            "decided_by": self.decided_by,
            "lead": self.lead or None,
            "health": self.health,
            "codes": {m: r.codes for m, r in self.per_modality.items()},
            "code_agreement": self.code_agreement,
            "segment_scores": {m: r.segment_scores for m, r in self.per_modality.items()},
            "per_modality": {
                m: _modality_dict(r, self.class_names) for m, r in self.per_modality.items()
            },
            "model_version": self.model_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detection:
        """Inverse of `to_dict` (extra keys such as `source` are ignored; `decided_by`,
        `codes` and `segment_scores` are derived, so they are not read). A null score or
        threshold becomes NaN; records older than `lead` parse with `lead` "".

        Raises:
            ValueError: for missing keys or wrong types.
        """
        try:
            per_modality = {
                str(m): ModalityResult(
                    codes=[int(c) for c in r["codes"]],
                    probs=[float(p) for p in r["probabilities"].values()],
                    score=float(r["score"]),
                    segment_scores=[float(s) for s in r["segment_scores"]],
                    window_score=_float_or_none(r.get("window_score")),
                    window_probs=_floats_or_none(r.get("window_probabilities")),
                    raw_score=_float_or_none(r.get("raw_score")),
                )
                for m, r in (data.get("per_modality") or {}).items()
            }
            probabilities = {str(k): float(v) for k, v in data["probabilities"].items()}
            names: list[str] = list(probabilities)
            for r in (data.get("per_modality") or {}).values():
                names = names or [str(k) for k in r["probabilities"]]
            agreement = data.get("code_agreement")
            return cls(
                furnace_id=str(data["furnace_id"]),
                window_end=float(data["window_end"]),
                condition=str(data["condition"]),
                probabilities=probabilities,
                score=_nan_for_none(data["score"]),
                threshold=_nan_for_none(data["threshold"]),
                is_abnormal=bool(data["is_abnormal"]),
                modalities=tuple(str(m) for m in data["modalities"]),
                health={str(k): str(v) for k, v in data["health"].items()},
                per_modality=per_modality,
                code_agreement=None if agreement is None else float(agreement),
                lead=str(data.get("lead") or ""),
                model_version=str(data.get("model_version", "")),
                class_names=tuple(names),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            msg = f"invalid detection record: {exc!r}"
            raise ValueError(msg) from exc


def _modality_dict(r: ModalityResult, class_names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "codes": r.codes,
        "score": r.score,
        "probabilities": dict(zip(class_names, r.probs, strict=False)),
        "segment_scores": r.segment_scores,
    }
    if r.window_score is not None:  # a memory head decided: the window graph's own view
        out["window_score"] = r.window_score
    if r.raw_score is not None:  # per-furnace adaptation: the score before it
        out["raw_score"] = r.raw_score
    if r.window_probs is not None:
        out["window_probabilities"] = dict(zip(class_names, r.window_probs, strict=False))
    return out


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def _floats_or_none(x: Any) -> list[float] | None:
    """A stored probability mapping (in class order) as a list, or None."""
    return None if x is None else [float(v) for v in x.values()]


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _nan_for_none(x: Any) -> float:
    return math.nan if x is None else float(x)
