"""The service's decision rule restated for tests: what score and threshold a detection
must carry given its per-modality views and the bundle's thresholds (service.engine)."""

from __future__ import annotations

from typing import Any

import pytest

from service.bundle import RATIO_FLOOR, Thresholds


def check_decision(d: dict[str, Any], thr: Thresholds) -> None:
    """Assert that detection JSON `d` (a usable window) follows the bundle's fusion rule."""
    used = tuple(d["modalities"])
    assert d["threshold"] == pytest.approx(thr.for_modalities(used))
    assert d["is_abnormal"] == (d["score"] > d["threshold"])
    views = d["per_modality"]
    if thr.fusion == "max_ratio":
        ratio = {m: views[m]["score"] / max(thr.modality(m), RATIO_FLOOR) for m in used}
        assert d["lead"] == max(used, key=lambda m: ratio[m])
        assert d["score"] == pytest.approx(max(ratio.values()), rel=1e-6)
    else:
        assert d["score"] == pytest.approx(1 - d["probabilities"]["normal"], abs=1e-6)
    for name, p in d["probabilities"].items():  # the average of the deciding views
        mean = sum(views[m]["probabilities"][name] for m in used) / len(used)
        assert p == pytest.approx(mean, abs=1e-6)
    if d["is_abnormal"]:
        assert d["condition"] != "normal"
