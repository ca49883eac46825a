"""POSTed windows -> `Window`: the baseline a request gives, for 3- and 6-column models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.requests import window_from_request
from service.schemas import WindowIn
from service.settings import Settings
from service.types import WindowSpec

T0 = 1_700_000_000.0
LONG = replace(WindowSpec(), long_baseline_seconds=600.0)
OPEN = Settings(auth_disabled=True)  # request building reads limits only


def _body(n: int, *, baseline: list[float] | None = None, level: float = 10_000.0) -> WindowIn:
    samples = [[level + i, level + 2 * i, level + 3 * i] for i in range(n)]
    current: dict[str, object] = {"start": T0, "rate_hz": 2.0, "samples": samples}
    if baseline is not None:
        current["baseline_a"] = baseline
    return WindowIn.model_validate({"current": current})


@pytest.mark.parametrize("spec", [WindowSpec(), LONG], ids=["short", "long"])
def test_the_request_baseline_fills_every_column_the_model_reads(spec: WindowSpec) -> None:
    settings = OPEN
    received = T0 + 100.0
    window, notes = window_from_request(
        _body(32, baseline=[9000.0, 9100.0, 9200.0]), "f1", spec, settings, received_at=received
    )
    assert notes["baseline"] == "given" and window.current is not None
    expected = [9000.0, 9100.0, 9200.0] * (spec.baseline_width // 3)
    np.testing.assert_array_equal(window.current.baseline, np.float32(expected))

    window, notes = window_from_request(_body(32), "f1", spec, settings, received_at=received)
    assert notes["baseline"] == "window_median" and window.current is not None
    assert window.current.baseline.shape == (spec.baseline_width,)


@pytest.mark.fault(
    "a POSTed window with one history sample more than the long baseline reads",
    expected="ValueError `at most 1232` (422 over HTTP)",
)
def test_history_gives_both_medians_and_the_long_one_uses_what_was_sent() -> None:
    n = 32 + 400  # the window plus 200 s: the 120-s median is covered, the 600-s one is not
    body = _body(n, level=10_000.0)
    window, notes = window_from_request(body, "f1", LONG, OPEN, received_at=T0 + 400.0)
    assert notes["baseline"] == "history" and window.current is not None
    history = np.asarray(body.current.samples[:400], np.float32) if body.current else None
    assert history is not None
    np.testing.assert_allclose(window.current.baseline[:3], np.median(history[-240:], axis=0))
    np.testing.assert_allclose(window.current.baseline[3:], np.median(history, axis=0))
    too_many = _body(32 + 1200 + 1)
    with pytest.raises(ValueError, match="at most 1232"):
        window_from_request(too_many, "f1", LONG, OPEN, received_at=T0 + 1000.0)
