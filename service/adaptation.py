"""Per-furnace score adaptation: each furnace is compared with its own recent past
(docs/service.md "Per-furnace adaptation").

Furnaces differ in ways training cannot cover: one furnace's normal current sits where the
heads have learnt overheating, another's camera view reads as a hot spot. Their windows score
high for hours, and the thresholds that keep such furnaces quiet are the thresholds that miss
events on all the others. The adaptation removes a furnace's standing bias before the
decision:

- per (furnace, modality) the engine keeps the logit z = log(s / (1 - s)) of the raw score s
  (1 - p(normal)) of every window that modality decided (a usable sensor), keyed by its hop
  index `round(window_end / hop_seconds)`;
- a window's baseline b is the `quantile` of the z of the same furnace and modality over the
  `window_seconds` before it (strictly earlier hop indices), once at least `min_windows` of
  them are held (before that: no adaptation);
- the adapted score is sigmoid(z - min(max(0, b - reference), max_shift)), `reference` the
  modality's typical baseline on the calibration furnaces (the median of their baselines).
  Only a baseline above the typical one is removed: the adaptation never raises a score, and
  a furnace that reads like the training furnaces is left as it is. The shift is capped at
  `max_shift_logits` (4 by default, where the calibration's figures no longer change), so a
  furnace that stands far above every threshold stays flagged however long it does.

A condition lifts the baseline only once it has filled more than 1 - quantile of the window
(7.5 of 10 minutes at the defaults): by then its episode is open. The thresholds and the
alert policy are calibrated on adapted scores (`furnace calibrate-alerts`), which also sets
`reference`. The raw score stays in the detection (`per_modality.*.raw_score`), so a restart
rebuilds the history from the detections stream (`prime`), as the memory heads' codes are.

One `ScoreHistory` belongs to one engine (one bundle); offline replays take their own
(`Engine.new_adapter`), so replays never read each other's windows. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.histories import FurnaceHistory

SCORE_EPS = 1e-6  # scores are clipped to [eps, 1 - eps] before the logit
DEFAULT_WINDOW_SECONDS = 600.0
DEFAULT_QUANTILE = 0.25
DEFAULT_MIN_WINDOWS = 30
DEFAULT_MAX_SHIFT = 4.0  # logits
MAX_WINDOW_SECONDS = 6 * 3600.0


def logit(score: float) -> float:
    s = min(max(float(score), SCORE_EPS), 1.0 - SCORE_EPS)
    return math.log(s / (1.0 - s))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class AdaptationSpec:
    """The manifest's optional `adaptation` section (module docstring)."""

    window_seconds: float
    quantile: float
    min_windows: int
    hop_seconds: float
    reference: dict[str, float]  # modality -> typical baseline logit on calibration furnaces
    max_shift: float = DEFAULT_MAX_SHIFT  # logits: the most a score is lowered

    @property
    def span(self) -> int:
        """Hop indices a baseline reaches back (the window's own excluded)."""
        return max(1, round(self.window_seconds / self.hop_seconds))

    def to_manifest(self) -> dict[str, Any]:
        return {
            "window_seconds": self.window_seconds,
            "quantile": self.quantile,
            "min_windows": self.min_windows,
            "hop_seconds": self.hop_seconds,
            "reference": dict(self.reference),
            "max_shift_logits": self.max_shift,
            "rule": "score' = sigmoid(z - min(max(0, b - reference), max_shift_logits)), "
            "z = logit(score), b = the quantile of the furnace's z over the window_seconds "
            "before the window (min_windows of them at the least, else score' = score)",
        }


def baseline_of(values: Iterable[float], spec: AdaptationSpec) -> float | None:
    """The baseline of a window given the earlier windows' logits (None: too few)."""
    past = np.fromiter(values, dtype=np.float64)
    if past.size < spec.min_windows:
        return None
    return float(np.quantile(past, spec.quantile))


def adapted(score: float, baseline: float | None, spec: AdaptationSpec, modality: str) -> float:
    """The adapted score (module docstring): unchanged without a baseline or a reference."""
    if baseline is None or modality not in spec.reference:
        return score
    shift = min(baseline - spec.reference[modality], spec.max_shift)
    return score if shift <= 0.0 else sigmoid(logit(score) - shift)


class ScoreHistory(FurnaceHistory):
    """Per (furnace, modality): hop index -> raw score logit, bounded to the baseline's
    reach. Thread-safe (the stream and HTTP pools score at once)."""

    def __init__(self, spec: AdaptationSpec) -> None:
        super().__init__(spec.hop_seconds)
        self.spec = spec
        self._z: dict[tuple[str, str], dict[int, float]] = {}

    def baselines(
        self, modality: str, windows: Sequence[tuple[str, float, float]]
    ) -> list[float | None]:
        """Store a batch of one modality's windows ((furnace id, window end, raw score) each)
        and return each one's baseline. Every raw score is stored first (a key keeps its
        first one: a redelivered window does not rewrite history), then each window reads
        strictly earlier hop indices, so a batch gives what one-by-one scoring gives."""
        keys = [self.key(end) for _, end, _ in windows]
        out = []
        with self._lock:
            for (furnace_id, _, score), k in zip(windows, keys, strict=True):
                self._z.setdefault((furnace_id, modality), {}).setdefault(k, logit(score))
            for (furnace_id, _, _), k in zip(windows, keys, strict=True):
                held = self._z[(furnace_id, modality)]
                lo = k - self.spec.span
                out.append(baseline_of((z for j, z in held.items() if lo <= j < k), self.spec))
            for furnace_id in {f for f, _, _ in windows}:
                self._prune(self._z[(furnace_id, modality)])
        return out

    def adjust(self, modality: str, windows: Sequence[tuple[str, float, float]]) -> list[float]:
        """`baselines`, then each window's adapted score."""
        found = self.baselines(modality, windows)
        return [
            adapted(score, b, self.spec, modality)
            for (_, _, score), b in zip(windows, found, strict=True)
        ]

    def _prune(self, held: dict[int, float]) -> None:
        """Keep the keys the newest one's baseline can reach (and itself)."""
        if len(held) <= self.spec.span + 1:
            return
        newest = max(held)
        for j in [j for j in held if j < newest - self.spec.span]:
            del held[j]

    def prime(self, furnace_id: str, records: Iterable[tuple[float, Mapping[str, float]]]) -> int:
        """Store a furnace's raw scores from its stored detections ((window end, modality ->
        raw score) each, oldest first; non-finite ones skipped) and mark it primed. A key
        that already holds a score keeps it. Returns how many scores were stored."""
        stored = 0
        with self._lock:
            for end, per_modality in records:
                k = self.key(end)
                for modality, score in per_modality.items():
                    if not math.isfinite(score):
                        continue
                    held = self._z.setdefault((furnace_id, modality), {})
                    if k not in held:
                        held[k] = logit(score)
                        stored += 1
            for (f, _), held in self._z.items():
                if f == furnace_id:
                    self._prune(held)
            self._primed.add(furnace_id)
        return stored

    def windows(self, furnace_id: str, modality: str) -> list[int]:
        """The hop indices held for a furnace and modality, ascending (tests, diagnostics)."""
        with self._lock:
            return sorted(self._z.get((furnace_id, modality), {}))

    def clear(self) -> None:
        with self._lock:
            self._z.clear()
            self._primed.clear()
