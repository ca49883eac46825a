"""Prometheus metrics of one service instance: every series docs/design/serving.md 4.1 names,
nothing more.

Collectors live in a `Metrics` object with its own `CollectorRegistry`, built with the app, so
two apps in one test process never collide ("Duplicated timeseries in CollectorRegistry",
rycus86/prometheus_flask_exporter #17). Histograms put a bucket edge at each objective.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

OTHER_FURNACE: Final = "other"

# Inference of these small encoders is 1e-4 s for one window, 1e-3 s for a batch
# (docs/design/serving.md 6).
INFERENCE_BUCKETS: Final = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25)
BATCH_SIZE_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
# Window end -> detection committed; the objective is p99 <= 1 s, so 1 s is a bucket edge.
DETECTION_DELAY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# Scores live in [0, 1]; finer near 1, where thresholds sit.
ANOMALY_SCORE_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Health probes take ~1 ms; a POSTed window with frames up to a few hundred ms under load.
HTTP_BUCKETS: Final = (1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

SOURCES: Final = ("redis", "http")
MODALITY_SETS: Final = ("current", "camera", "both")
RELOAD_OUTCOMES: Final = ("ok", "failed")


def status_class(status_code: int) -> str:
    """`200` -> `"2xx"`: the HTTP label is the class, never the raw code."""
    return f"{status_code // 100}xx"


class _WithoutCreated(Collector):
    """Every family of `source` minus client_python's `_created` samples.

    The text format would expose each counter and histogram child twice (`x_total` and a
    `x_created` gauge); docs/design/serving.md 4.1 lists no `_created` series. Disabling them in
    client_python is process-global (`disable_created_metrics`), so filter here instead.
    """

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield kept


class Metrics:
    """Every collector of one app, in one private registry.

    Counters are named without `_total`; client_python appends it. No gauge `x` next to a
    counter `x_total`: client_python strips `_total`, and the two would collide
    (prometheus/client_python #818).

    Args:
        max_furnace_labels: distinct `furnace` label values before ids become `"other"`
            (`FURNACE_MAX_FURNACE_LABELS`).
        furnaces: the configured fleet, registered first.
    """

    def __init__(self, *, max_furnace_labels: int = 64, furnaces: Iterable[str] = ()) -> None:
        if max_furnace_labels < 0:
            msg = f"max_furnace_labels must be >= 0, got {max_furnace_labels}"
            raise ValueError(msg)
        self.max_furnace_labels = max_furnace_labels
        self._furnaces: set[str] = set()
        self._lock = threading.Lock()
        # Collectors register in `r` (which refuses duplicates); `registry` is what is
        # exposed: the same families without `_created` samples.
        r = CollectorRegistry(auto_describe=True)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WithoutCreated(r))

        self.model_info = Gauge(
            "furnace_model_info",
            "The loaded model bundle (always 1).",
            ["model_version", "bundle_sha256", "provider"],
            registry=r,
        )
        self.windows_scored = Counter(
            "furnace_windows_scored",
            "Windows scored, by where they came from and which modalities they held.",
            ["source", "modalities"],
            registry=r,
        )
        self.windows_rejected = Counter(
            "furnace_windows_rejected",
            "Windows refused before scoring.",
            ["source", "reason"],
            registry=r,
        )
        self.inference_seconds = Histogram(
            "furnace_inference_seconds",
            "ONNX Runtime run() time per batch.",
            ["modality"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.inference_batch_size = Histogram(
            "furnace_inference_batch_size",
            "Windows per ONNX Runtime run().",
            ["modality"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.detection_delay_seconds = Histogram(
            "furnace_detection_delay_seconds",
            "Window end (sensor time) to detection committed.",
            buckets=DETECTION_DELAY_BUCKETS,
            registry=r,
        )
        self.http_request_duration_seconds = Histogram(
            "furnace_http_request_duration_seconds",
            "HTTP request duration by route template.",
            ["route", "method", "status_class"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.anomaly_score = Histogram(
            "furnace_anomaly_score",
            "Anomaly score per scored window and modality (a drift signal).",
            ["modality"],
            buckets=ANOMALY_SCORE_BUCKETS,
            registry=r,
        )
        self.alert_episodes = Counter(
            "furnace_alert_episodes",
            "Alert episodes opened.",
            ["furnace", "condition"],
            registry=r,
        )
        self.alert_active = Gauge(
            "furnace_alert_active",
            "1 while an alert episode is open.",
            ["furnace", "condition"],
            registry=r,
        )
        self.modality_up = Gauge(
            "furnace_modality_up",
            "1 when the modality was healthy in the furnace's last window.",
            ["furnace", "modality"],
            registry=r,
        )
        self.stream_lag_entries = Gauge(
            "furnace_stream_lag_entries",
            "Entries not yet delivered to the consumer group (XINFO GROUPS lag).",
            ["furnace", "modality"],
            registry=r,
        )
        self.stream_pending_entries = Gauge(
            "furnace_stream_pending_entries",
            "Entries delivered but not acknowledged (XINFO GROUPS pending).",
            ["furnace", "modality"],
            registry=r,
        )
        self.dead_letters = Counter(
            "furnace_dead_letters",
            "Entries moved to the dead-letter stream.",
            ["modality", "reason"],
            registry=r,
        )
        self.entries_late = Counter(
            "furnace_entries_late",
            "Entries older than an already closed window (acked, not rescored).",
            ["modality", "reason"],
            registry=r,
        )
        self.model_reloads = Counter(
            "furnace_model_reloads",
            "Model reload attempts by outcome.",
            ["outcome"],
            registry=r,
        )

        # Known label values start at 0, so rate() and absent-style alerts see the series.
        for source in SOURCES:
            for modalities in MODALITY_SETS:
                self.windows_scored.labels(source=source, modalities=modalities)
        for outcome in RELOAD_OUTCOMES:
            self.model_reloads.labels(outcome=outcome)
        self.register_furnaces(furnaces)

    # -- furnace labels -------------------------------------------------------------------

    def register_furnaces(self, furnace_ids: Iterable[str]) -> None:
        """Give these ids their own label while room is left (first come, first served).

        Call it with the configured fleet and with every furnace found by stream discovery;
        ids arriving only over HTTP are never registered, so they report as `"other"`.
        """
        with self._lock:
            for furnace_id in furnace_ids:
                if furnace_id == OTHER_FURNACE or furnace_id in self._furnaces:
                    continue
                if len(self._furnaces) >= self.max_furnace_labels:
                    break
                self._furnaces.add(furnace_id)

    def furnace_label(self, furnace_id: str) -> str:
        """The `furnace` label value: the id if registered, else `"other"`."""
        return furnace_id if furnace_id in self._furnaces else OTHER_FURNACE

    @property
    def furnaces(self) -> frozenset[str]:
        """Ids that have a label of their own."""
        with self._lock:
            return frozenset(self._furnaces)

    # -- setters for the app, the engine and the stream consumer --------------------------

    def set_model_info(self, *, model_version: str, bundle_sha256: str, provider: str) -> None:
        """Replace the model series (one per process): after a reload the old one disappears."""
        self.model_info.clear()
        self.model_info.labels(
            model_version=model_version, bundle_sha256=bundle_sha256[:12], provider=provider
        ).set(1)

    def window_scored(self, *, source: str, modalities: str) -> None:
        self.windows_scored.labels(source=source, modalities=modalities).inc()

    def window_rejected(self, *, source: str, reason: str) -> None:
        self.windows_rejected.labels(source=source, reason=reason).inc()

    def observe_inference(self, *, modality: str, seconds: float, batch_size: int) -> None:
        """One ORT `run()` over `batch_size` windows of one modality."""
        self.inference_seconds.labels(modality=modality).observe(seconds)
        self.inference_batch_size.labels(modality=modality).observe(batch_size)

    def observe_detection_delay(self, seconds: float) -> None:
        self.detection_delay_seconds.observe(max(seconds, 0.0))

    def observe_http(self, *, route: str, method: str, status_code: int, seconds: float) -> None:
        """`route` is the template (`/v1/furnaces/{furnace_id}/windows`), never the raw path."""
        self.http_request_duration_seconds.labels(
            route=route, method=method, status_class=status_class(status_code)
        ).observe(seconds)

    def observe_score(self, *, modality: str, score: float) -> None:
        self.anomaly_score.labels(modality=modality).observe(score)

    def alert_opened(self, *, furnace_id: str, condition: str) -> None:
        """An alert episode opened: count it and mark it active."""
        furnace = self.furnace_label(furnace_id)
        self.alert_episodes.labels(furnace=furnace, condition=condition).inc()
        self.alert_active.labels(furnace=furnace, condition=condition).set(1)

    def alert_closed(self, *, furnace_id: str, condition: str) -> None:
        self.alert_active.labels(furnace=self.furnace_label(furnace_id), condition=condition).set(0)

    def set_alert_active(self, *, furnace_id: str, condition: str, active: bool) -> None:
        """Set the gauge from persisted state (e.g. after a restart) without counting."""
        furnace = self.furnace_label(furnace_id)
        self.alert_active.labels(furnace=furnace, condition=condition).set(1 if active else 0)

    def set_modality_up(self, *, furnace_id: str, modality: str, up: bool) -> None:
        furnace = self.furnace_label(furnace_id)
        self.modality_up.labels(furnace=furnace, modality=modality).set(1 if up else 0)

    def set_stream_lag(self, *, furnace_id: str, modality: str, lag: int | None) -> None:
        """XINFO GROUPS `lag`; Redis reports nil when it cannot tell, and then we export nothing
        rather than 0 (docs/design/serving.md 1.7)."""
        furnace = self.furnace_label(furnace_id)
        if lag is None:
            try:
                self.stream_lag_entries.remove(furnace, modality)
            except KeyError:
                pass
            return
        self.stream_lag_entries.labels(furnace=furnace, modality=modality).set(lag)

    def set_stream_pending(self, *, furnace_id: str, modality: str, pending: int) -> None:
        furnace = self.furnace_label(furnace_id)
        self.stream_pending_entries.labels(furnace=furnace, modality=modality).set(pending)

    def forget_stream(self, *, furnace_id: str, modality: str) -> None:
        """Drop the lag and pending series of a stream this replica no longer reads."""
        furnace = self.furnace_label(furnace_id)
        for gauge in (self.stream_lag_entries, self.stream_pending_entries):
            try:
                gauge.remove(furnace, modality)
            except KeyError:
                pass

    def dead_letter(self, *, modality: str, reason: str) -> None:
        self.dead_letters.labels(modality=modality, reason=reason).inc()

    def entry_late(self, *, modality: str, reason: str = "window_closed") -> None:
        self.entries_late.labels(modality=modality, reason=reason).inc()

    def model_reload(self, *, outcome: str) -> None:
        """`outcome` is `"ok"` or `"failed"` (the alert rule watches `"failed"`)."""
        self.model_reloads.labels(outcome=outcome).inc()

    # -- exposition -----------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """Body and content type for `GET /metrics` (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
