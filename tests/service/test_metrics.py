"""The Metrics object exposes exactly the series docs/design/serving.md 4.1 names, in its own
registry."""

from __future__ import annotations

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from service.detection import Detection, ModalityResult
from service.metrics import DRIFT_WINDOWS, OTHER_FURNACE, Metrics

# docs/design/serving.md 4.1: exposed family name -> (type, label names).
SERIES: dict[str, tuple[str, frozenset[str]]] = {
    "furnace_model_info": (
        "gauge",
        frozenset({"model_version", "bundle_sha256", "provider", "bundle", "origin", "desired"}),
    ),
    "furnace_windows_scored": ("counter", frozenset({"source", "modalities"})),
    "furnace_windows_rejected": ("counter", frozenset({"source", "reason"})),
    "furnace_inference_seconds": ("histogram", frozenset({"modality"})),
    "furnace_inference_batch_size": ("histogram", frozenset({"modality"})),
    "furnace_detection_delay_seconds": ("histogram", frozenset()),
    "furnace_detections_within_objective": ("counter", frozenset()),
    "furnace_detection_delay_objective_seconds": ("gauge", frozenset()),
    "furnace_http_request_duration_seconds": (
        "histogram",
        frozenset({"route", "method", "status_class"}),
    ),
    "furnace_anomaly_score": ("histogram", frozenset({"modality"})),
    "furnace_score_adaptation_shift_logits": ("histogram", frozenset({"modality"})),
    "furnace_alert_episodes": ("counter", frozenset({"furnace", "condition"})),
    "furnace_alert_active": ("gauge", frozenset({"furnace", "condition"})),
    "furnace_modality_up": ("gauge", frozenset({"furnace", "modality"})),
    "furnace_stream_lag_entries": ("gauge", frozenset({"furnace", "modality"})),
    "furnace_stream_pending_entries": ("gauge", frozenset({"furnace", "modality"})),
    "furnace_dead_letters": ("counter", frozenset({"modality", "reason"})),
    "furnace_entries_late": ("counter", frozenset({"modality", "reason"})),
    "furnace_model_reloads": ("counter", frozenset({"outcome"})),
    # docs/design/serving.md 4.1, "As built"
    "furnace_last_window_timestamp_seconds": ("gauge", frozenset({"furnace"})),
    "furnace_window_score": ("gauge", frozenset({"furnace"})),
    "furnace_window_threshold": ("gauge", frozenset({"furnace"})),
    "furnace_code_usage_drift": ("gauge", frozenset({"furnace", "modality"})),
    "furnace_redis_memory_used_bytes": ("gauge", frozenset()),
    "furnace_redis_memory_max_bytes": ("gauge", frozenset()),
}
# prometheus_client's ProcessCollector (Linux): CPU, memory, file descriptors.
PROCESS_SERIES = frozenset(
    {
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    }
)


def observe_one_of_each(metrics: Metrics, furnace_id: str = "F01") -> None:
    """One sample in every series, as a scored window, a request and a stream poll make them."""
    metrics.register_furnaces([furnace_id])
    metrics.set_model_info(model_version="0.1.0", bundle_sha256="ab" * 32, provider="CPU")
    metrics.window_scored(source="redis", modalities="both")
    metrics.window_rejected(source="http", reason="shape")
    metrics.observe_inference(modality="current", seconds=2e-4, batch_size=3)
    metrics.observe_detection_delay(0.3)
    metrics.observe_http(
        route="/v1/furnaces/{furnace_id}/windows", method="POST", status_code=200, seconds=0.004
    )
    metrics.observe_score(modality="camera", score=0.42, raw_score=0.9)
    metrics.alert_opened(furnace_id=furnace_id, condition="eruption")
    metrics.set_code_reference({"current": [0.25] * 4, "camera": [0.25] * 4})
    metrics.window_recorded(detection(furnace_id, codes=[0, 1, 2, 3]), usable=["current"])
    metrics.set_redis_memory(used_bytes=1_000_000, max_bytes=0)
    metrics.set_stream_lag(furnace_id=furnace_id, modality="current", lag=5)
    metrics.set_stream_pending(furnace_id=furnace_id, modality="current", pending=2)
    metrics.dead_letter(modality="camera", reason="decode")
    metrics.entry_late(modality="current")
    metrics.model_reload(outcome="ok")


def detection(
    furnace_id: str,
    *,
    codes: list[int] | None = None,
    health: dict[str, str] | None = None,
    score: float = 0.5,
) -> Detection:
    """A decided window of `furnace_id` whose current and camera views chose `codes`."""
    codes = codes or [0, 1, 2, 3]
    part = ModalityResult(codes=codes, probs=[0.5, 0.5], score=score, segment_scores=[score])
    return Detection(
        furnace_id=furnace_id,
        window_end=1_700_000_000.0,
        condition="normal",
        probabilities={"normal": 0.5, "eruption": 0.5},
        score=score,
        threshold=1.0,
        is_abnormal=False,
        modalities=("current", "camera"),
        health=health or {"current": "ok", "camera": "ok"},
        per_modality={"current": part, "camera": part},
    )


def _families(metrics: Metrics) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    body, _ = metrics.render()
    return {
        f.name: (f.type, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(body.decode())
    }


def _samples(metrics: Metrics, name: str) -> list[tuple[dict[str, str], float]]:
    body, _ = metrics.render()
    return [
        (s.labels, s.value)
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.name == name
    ]


def test_two_instances_coexist() -> None:
    first, second = Metrics(), Metrics()  # module-level collectors would raise here
    first.window_scored(source="http", modalities="current")
    assert first.registry is not second.registry
    assert ({"source": "http", "modalities": "current"}, 1.0) in _samples(
        first, "furnace_windows_scored_total"
    )
    assert ({"source": "http", "modalities": "current"}, 0.0) in _samples(
        second, "furnace_windows_scored_total"
    )


def test_every_serving_series_is_rendered_with_its_type_and_labels() -> None:
    metrics = Metrics()
    observe_one_of_each(metrics)
    families = _families(metrics)
    for name, (kind, labels) in SERIES.items():
        assert name in families, f"{name} missing from /metrics"
        got_kind, samples = families[name]
        assert got_kind == kind, name
        assert samples, f"{name} has no sample"
        for sample_name, sample_labels, _ in samples:
            assert set(sample_labels) - {"le"} == labels, sample_name
    # Nothing beyond the table (client_python's `_created` samples belong to their family).
    assert set(families) - PROCESS_SERIES == set(SERIES)
    assert {"process_cpu_seconds", "process_resident_memory_bytes"} <= set(families)
    rendered = {s for _, samples in families.values() for s, _, _ in samples}
    for name in ("furnace_windows_scored_total", "furnace_inference_seconds_bucket"):
        assert name in rendered


def test_no_gauge_collides_with_a_counter_total() -> None:
    # prometheus/client_python #818: a gauge `x` and a counter `x_total` collide.
    gauges = {n for n, (kind, _) in SERIES.items() if kind == "gauge"}
    counters = {n for n, (kind, _) in SERIES.items() if kind == "counter"}
    assert not gauges & counters
    assert not {g.removesuffix("_total") for g in gauges} & counters


def test_buckets_put_an_edge_at_each_objective() -> None:
    metrics = Metrics()
    observe_one_of_each(metrics)

    def edges(name: str) -> list[float]:
        return sorted(
            float(labels["le"])
            for labels, _ in _samples(metrics, f"{name}_bucket")
            if labels["le"] != "+Inf"
        )

    assert 1.0 in edges("furnace_detection_delay_seconds")
    # The default objective is grace (1 s) + 1 s: edges between 1 and 2 s, 2 s among them.
    assert {1.25, 1.5, 1.75, 2.0} <= set(edges("furnace_detection_delay_seconds"))
    assert edges("furnace_detection_delay_seconds")[0] == 0.05
    assert edges("furnace_detection_delay_seconds")[-1] == 16.0
    assert edges("furnace_inference_seconds")[0] == pytest.approx(1e-4)
    assert edges("furnace_inference_seconds")[-1] == 0.25
    assert edges("furnace_inference_batch_size") == [2.0**i for i in range(9)]
    assert edges("furnace_anomaly_score")[-1] == 1.0
    assert all(0.0 < e <= 1.0 for e in edges("furnace_anomaly_score"))


@pytest.mark.fault(
    "more furnace ids than FURNACE_MAX_FURNACE_LABELS; ids invented by HTTP clients",
    expected="the extra ids share the label `other` and get no per-furnace health gauge",
)
def test_furnace_labels_are_capped_first_come_first_served() -> None:
    metrics = Metrics(max_furnace_labels=2, furnaces=["F01"])
    metrics.register_furnaces(["F02", "F03", "F01"])
    assert metrics.furnaces == {"F01", "F02"}
    assert metrics.furnace_label("F01") == "F01"
    assert metrics.furnace_label("F02") == "F02"
    assert metrics.furnace_label("F03") == OTHER_FURNACE
    # An id that only ever arrives over HTTP never gets a label of its own.
    assert Metrics().furnace_label("invented-by-a-client") == OTHER_FURNACE

    metrics.set_modality_up(furnace_id="F03", modality="current", up=False)
    metrics.set_modality_up(furnace_id="F02", modality="current", up=True)
    # Ids sharing `other` would overwrite each other's health: no per-furnace gauge for them.
    assert {labels["furnace"] for labels, _ in _samples(metrics, "furnace_modality_up")} == {"F02"}


def test_stream_lag_none_removes_the_series() -> None:
    metrics = Metrics(furnaces=["F01"])
    metrics.set_stream_lag(furnace_id="F01", modality="current", lag=7)
    assert _samples(metrics, "furnace_stream_lag_entries") == [
        ({"furnace": "F01", "modality": "current"}, 7.0)
    ]
    metrics.set_stream_lag(furnace_id="F01", modality="current", lag=None)
    assert _samples(metrics, "furnace_stream_lag_entries") == []
    metrics.set_stream_lag(furnace_id="F01", modality="camera", lag=None)  # never set: no error
    assert _samples(metrics, "furnace_stream_lag_entries") == []


def test_forget_stream_drops_lag_and_pending() -> None:
    metrics = Metrics(furnaces=["F01"])
    metrics.set_stream_lag(furnace_id="F01", modality="camera", lag=1)
    metrics.set_stream_pending(furnace_id="F01", modality="camera", pending=3)
    metrics.forget_stream(furnace_id="F01", modality="camera")
    assert _samples(metrics, "furnace_stream_lag_entries") == []
    assert _samples(metrics, "furnace_stream_pending_entries") == []


def test_model_info_keeps_one_series_with_a_short_hash() -> None:
    metrics = Metrics()
    metrics.set_model_info(model_version="1", bundle_sha256="0123456789abcdef" * 4, provider="CPU")
    metrics.set_model_info(model_version="2", bundle_sha256="fedcba9876543210" * 4, provider="CPU")
    assert _samples(metrics, "furnace_model_info") == [
        (
            {
                "model_version": "2",
                "bundle_sha256": "fedcba987654",
                "provider": "CPU",
                "bundle": "",
                "origin": "FURNACE_BUNDLE",
                "desired": "",
            },
            1.0,
        )
    ]


def test_alert_gauge_and_episode_counter() -> None:
    metrics = Metrics(furnaces=["F01"])
    metrics.alert_opened(furnace_id="F01", condition="overheating")
    metrics.alert_closed(furnace_id="F01", condition="overheating")
    metrics.alert_opened(furnace_id="F01", condition="overheating")
    labels = {"furnace": "F01", "condition": "overheating"}
    assert _samples(metrics, "furnace_alert_episodes_total") == [(labels, 2.0)]
    assert _samples(metrics, "furnace_alert_active") == [(labels, 1.0)]
    metrics.set_alert_active(furnace_id="F01", condition="overheating", active=False)
    assert _samples(metrics, "furnace_alert_active") == [(labels, 0.0)]


def test_http_label_is_the_status_class() -> None:
    metrics = Metrics()
    metrics.observe_http(route="/readyz", method="GET", status_code=503, seconds=0.001)
    counts = _samples(metrics, "furnace_http_request_duration_seconds_count")
    assert counts == [({"route": "/readyz", "method": "GET", "status_class": "5xx"}, 1.0)]


def test_render_returns_the_text_format() -> None:
    body, content_type = Metrics().render()
    assert content_type == CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain")
    assert b"# TYPE furnace_windows_scored_total counter" in body


def test_max_furnace_labels_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_furnace_labels"):
        Metrics(max_furnace_labels=-1)


def test_the_delay_objective_is_an_edge_a_gauge_and_a_counter() -> None:
    metrics = Metrics(delay_objective_seconds=1.6)
    for seconds in (0.5, 1.6, 1.7, 30.0):
        metrics.observe_detection_delay(seconds)
    edges = [
        labels["le"] for labels, _ in _samples(metrics, "furnace_detection_delay_seconds_bucket")
    ]
    assert "1.6" in edges
    assert _samples(metrics, "furnace_detection_delay_objective_seconds") == [({}, 1.6)]
    assert _samples(metrics, "furnace_detections_within_objective_total") == [({}, 2.0)]


def test_alert_active_follows_the_episode_not_the_events_condition() -> None:
    # Issue 15 item 1: opened as overheating, updated to eruption, closed as eruption; the
    # overheating series stayed at 1 and "Furnaces in alert" counted a closed episode.
    metrics = Metrics(furnaces=["F01", "F02"])
    metrics.alert_opened(furnace_id="F01", condition="overheating")
    metrics.set_alert_episode(furnace_id="F01", condition="eruption")  # "updated"
    active = {
        (labels["furnace"], labels["condition"]): value
        for labels, value in _samples(metrics, "furnace_alert_active")
    }
    assert active == {("F01", "overheating"): 0.0, ("F01", "eruption"): 1.0}
    metrics.alert_closed(furnace_id="F01", condition="eruption")
    assert all(value == 0.0 for _, value in _samples(metrics, "furnace_alert_active"))
    # Furnaces sharing `other` count: one closing does not clear the other's.
    metrics.alert_opened(furnace_id="X1", condition="eruption")
    metrics.alert_opened(furnace_id="X2", condition="eruption")
    metrics.alert_closed(furnace_id="X1")
    other = [
        v
        for labels, v in _samples(metrics, "furnace_alert_active")
        if labels["furnace"] == OTHER_FURNACE
    ]
    assert other == [1.0]


def test_episode_counters_start_at_zero_for_every_condition() -> None:
    # A counter born at 1 is invisible to increase(): the first episode would not count.
    metrics = Metrics(furnaces=["F01"])
    metrics.set_conditions(["normal", "eruption", "overheating"])
    metrics.register_furnaces(["F02"])
    counts = {
        (labels["furnace"], labels["condition"]): value
        for labels, value in _samples(metrics, "furnace_alert_episodes_total")
    }
    assert counts == {
        (f, c): 0.0 for f in ("F01", "F02") for c in ("eruption", "overheating", "unknown")
    }


@pytest.mark.fault(
    "a furnace whose windows stop",
    expected="furnace_modality_up drops to 0 and its score series goes after "
    "FURNACE_NO_DATA_SECONDS",
)
def test_a_furnace_without_new_windows_goes_down_after_no_data_seconds() -> None:
    now = [1000.0]
    metrics = Metrics(furnaces=["F01"], no_data_seconds=10.0, clock=lambda: now[0])
    metrics.window_recorded(detection("F01", score=0.7), usable=["current", "camera"])
    up = {labels["modality"]: value for labels, value in _samples(metrics, "furnace_modality_up")}
    assert up == {"current": 1.0, "camera": 1.0}
    assert _samples(metrics, "furnace_window_score") == [({"furnace": "F01"}, 0.7)]
    now[0] += 10.5  # the data stopped
    assert [v for _, v in _samples(metrics, "furnace_modality_up")] == [0.0, 0.0]
    assert _samples(metrics, "furnace_window_score") == []
    assert _samples(metrics, "furnace_last_window_timestamp_seconds") == [
        ({"furnace": "F01"}, 1000.0)
    ]
    metrics.window_recorded(detection("F01", health={"current": "ok", "camera": "dark"}))
    up = {labels["modality"]: value for labels, value in _samples(metrics, "furnace_modality_up")}
    assert up == {"current": 1.0, "camera": 0.0}


def test_code_usage_drift_against_the_bundle_reference() -> None:
    metrics = Metrics(furnaces=["F01", "F02"])
    metrics.set_code_reference({"current": [0.25] * 4, "camera": [0.5, 0.5, 0.0, 0.0]})
    for _ in range(DRIFT_WINDOWS + 5):
        metrics.window_recorded(detection("F01", codes=[0, 1, 2, 3]), usable=["current", "camera"])
        metrics.window_recorded(detection("F02", codes=[3, 3, 3, 3]), usable=["current"])
    drift = {
        (labels["furnace"], labels["modality"]): value
        for labels, value in _samples(metrics, "furnace_code_usage_drift")
    }
    assert drift == {
        ("F01", "current"): pytest.approx(0.0),
        ("F01", "camera"): pytest.approx(0.5),
        ("F02", "current"): pytest.approx(0.75),  # only the healthy modality counts
    }


def test_model_info_names_the_bundle_origin_and_model_desired() -> None:
    metrics = Metrics()
    metrics.set_model_info(model_version="1", bundle_sha256="ab" * 32, provider="CPU", bundle="a")
    metrics.set_model_desired("b")
    ((labels, _),) = _samples(metrics, "furnace_model_info")
    assert (labels["bundle"], labels["origin"], labels["desired"]) == ("a", "FURNACE_BUNDLE", "b")
    metrics.set_model_info(
        model_version="2",
        bundle_sha256="cd" * 32,
        provider="CPU",
        bundle="b",
        origin="model:desired",
    )
    ((labels, _),) = _samples(metrics, "furnace_model_info")
    assert (labels["bundle"], labels["origin"], labels["desired"]) == ("b", "model:desired", "b")
