"""Classical peer baselines on hand-crafted current features (scikit-learn).

- `gbm`: a supervised gradient-boosting classifier, current only: what a plant could build
  from labelled current logs without any learning of representations.
- `iforest`: an unsupervised IsolationForest fitted on normal training windows: anomaly
  score only (no condition names), the classic rule-free detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

from simulator.config import CLASS_NAMES, CLIP_A

F32 = NDArray[np.float32]


def current_window_features(x_c: F32, baseline: F32) -> NDArray[np.float64]:
    """Hand-crafted features of current windows.

    Args:
        x_c: (W, T, S, 3) amperes.
        baseline: (W, 3) per-phase median of the 120 s before each window (a long baseline
            in columns 3:6, if any, is not used: the peers keep their published inputs).

    Returns:
        (W, 27) float64: per phase (mean, std, min, max, lag-1 autocorrelation, share near
        zero, share at the clip) relative to the baseline, plus imbalance statistics and the
        trailing baseline level itself.
    """
    W = x_c.shape[0]
    baseline = baseline[:, :3]
    x = x_c.reshape(W, -1, 3).astype(np.float64)  # (W, T*S, 3)
    base = np.maximum(baseline.astype(np.float64), 1.0)[:, None, :]  # (W, 1, 3)
    rel = x / base
    centred = x - x.mean(1, keepdims=True)
    var = (centred**2).mean(1) + 1e-6
    lag1 = (centred[:, 1:] * centred[:, :-1]).mean(1) / var  # (W, 3)
    means = x.mean(1)  # (W, 3)
    imbalance = (x.max(2) - x.min(2)) / np.maximum(x.mean(2), 1.0)  # (W, T*S)
    feats = [
        rel.mean(1),
        rel.std(1),
        rel.min(1),
        rel.max(1),
        lag1,
        (rel < 0.1).mean(1),
        (x >= CLIP_A - 1.0).mean(1),
        np.stack(
            [
                imbalance.mean(1),
                imbalance.max(1),
                means.min(1) / np.maximum(means.max(1), 1.0),
                ((rel < 0.4).sum(2) >= 2).mean(1),  # several phases losing the arc at once
                baseline.mean(1) / CLIP_A,
                np.abs(rel.mean(1) - 1.0).mean(1),
            ],
            1,
        ),
    ]
    return np.concatenate(feats, 1)


@dataclass
class ClassicalBaseline:
    """A fitted scikit-learn baseline that outputs per-condition probabilities."""

    kind: str  # "gbm" | "iforest"
    model: Any

    def predict_proba(self, x_c: F32, baseline: F32) -> NDArray[np.float64]:
        """(W, 6) probabilities. IsolationForest: [1 - s, s, 0, ...] with s in [0, 1]."""
        feats = current_window_features(x_c, baseline)
        if self.kind == "gbm":
            probs = np.zeros((feats.shape[0], len(CLASS_NAMES)))
            probs[:, self.model.classes_] = self.model.predict_proba(feats)
            return probs
        raw = -self.model.score_samples(feats)  # higher = more anomalous
        s = 1.0 / (1.0 + np.exp(-(raw - 0.5) * 10.0))
        probs = np.zeros((feats.shape[0], len(CLASS_NAMES)))
        probs[:, 0], probs[:, 1] = 1.0 - s, s
        return probs


def fit_gbm(x_c: F32, baseline: F32, label: NDArray[np.int64], seed: int = 0) -> ClassicalBaseline:
    """Gradient boosting on current features, class-balanced sample weights."""
    feats = current_window_features(x_c, baseline)
    counts = np.bincount(label, minlength=len(CLASS_NAMES)).astype(float)
    weight = 1.0 / np.sqrt(np.maximum(counts[label], 1.0))
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=seed)
    model.fit(feats, label, sample_weight=weight / weight.mean())
    return ClassicalBaseline("gbm", model)


def fit_iforest(x_c: F32, baseline: F32, seed: int = 0) -> ClassicalBaseline:
    """IsolationForest on (normal) training windows."""
    model = IsolationForest(n_estimators=200, random_state=seed)
    model.fit(current_window_features(x_c, baseline))
    return ClassicalBaseline("iforest", model)
