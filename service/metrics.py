"""Prometheus metrics of one service instance: the series docs/design/serving.md 4.1 names, plus
the ones its "As built" note adds (per-furnace live state, code-usage drift, the delay
objective, Redis memory, the process collector).

Collectors live in a `Metrics` object with its own `CollectorRegistry`, built with the app, so
two apps in one test process never collide ("Duplicated timeseries in CollectorRegistry",
rycus86/prometheus_flask_exporter #17). Histograms put a bucket edge at each objective.
Per-furnace gauges (`furnace_modality_up`, the latest score, drift) are computed at scrape time
from the furnace's last window, so a furnace whose data stops goes down after
`no_data_seconds` instead of showing its last health forever.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np
from numpy.typing import NDArray
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.adaptation import logit

if TYPE_CHECKING:
    from service.detection import Detection

OTHER_FURNACE: Final = "other"
CONDITION_UNKNOWN: Final = "unknown"  # service.alerting.CONDITION_UNKNOWN (no import cycle)
# Code-usage drift: a furnace's codes over its last DRIFT_WINDOWS healthy windows per modality
# (5 min at a 2 s hop) against the bundle's training `code_usage`.
DRIFT_WINDOWS: Final = 150

# Inference of these small encoders is 1e-4 s for one window, 1e-3 s for a batch
# (docs/design/serving.md 6).
INFERENCE_BUCKETS: Final = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25)
BATCH_SIZE_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
# Window end -> detection committed. A window closes only once sensor time passes its end +
# FURNACE_GRACE_SECONDS, so the objective is grace + 1 s at p99 (2 s by default; the setting
# FURNACE_DELAY_OBJECTIVE_SECONDS overrides it): edges every 0.25 s from 1 to 2 s, and the
# objective itself is always added as an edge (`delay_buckets`).
DETECTION_DELAY_BUCKETS: Final = (
    0.05, 0.1, 0.25, 0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 16.0
)  # fmt: skip
# Scores live in [0, 1]; finer near 1, where thresholds sit.
ANOMALY_SCORE_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
ADAPTATION_SHIFT_BUCKETS: Final = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)  # logits
# Health probes take ~1 ms; a POSTed window with frames up to a few hundred ms under load.
HTTP_BUCKETS: Final = (1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

SOURCES: Final = ("redis", "http")
MODALITY_SETS: Final = ("current", "camera", "both")
RELOAD_OUTCOMES: Final = ("ok", "failed")


def delay_buckets(objective_seconds: float) -> tuple[float, ...]:
    """The detection delay buckets with `objective_seconds` as one of the edges."""
    return tuple(sorted({*DETECTION_DELAY_BUCKETS, float(objective_seconds)}))


def total_variation(counts: NDArray[np.float64], reference: NDArray[np.float64]) -> float:
    """Half the L1 distance between the code histogram `counts` (K,) and `reference` (K,)
    fractions: 0 same usage, 1 disjoint codes."""
    p = counts / max(float(counts.sum()), 1.0)
    q = reference / max(float(reference.sum()), 1e-12)
    return 0.5 * float(np.abs(p - q).sum())


@dataclass
class _CodeWindow:
    """The codes of one furnace and modality over its last `DRIFT_WINDOWS` healthy windows."""

    counts: NDArray[np.float64]  # (K,) occurrences of each code in `windows`
    windows: deque[NDArray[np.int64]] = field(default_factory=lambda: deque(maxlen=DRIFT_WINDOWS))

    def add(self, codes: Sequence[int]) -> None:
        arr = np.asarray(codes, dtype=np.int64)
        arr = arr[(arr >= 0) & (arr < self.counts.shape[0])]
        if len(self.windows) == self.windows.maxlen:
            np.subtract.at(self.counts, self.windows[0], 1.0)
        self.windows.append(arr)
        np.add.at(self.counts, arr, 1.0)


@dataclass
class _Live:
    """What the last window said about one furnace (label), and when it was recorded."""

    seen_at: float  # wall clock (Unix s) when the last window was recorded
    health: dict[str, str]
    score: float | None = None  # the last decided window's score and threshold
    threshold: float | None = None
    codes: dict[str, _CodeWindow] = field(default_factory=dict)


class _FurnaceLive(Collector):
    """Per-furnace gauges computed at scrape time from `Metrics._live` (see `Metrics`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        up = GaugeMetricFamily(
            "furnace_modality_up",
            "1 when the modality was healthy in the furnace's last window and that window is "
            "at most FURNACE_NO_DATA_SECONDS old; 0 otherwise.",
            labels=["furnace", "modality"],
        )
        seen = GaugeMetricFamily(
            "furnace_last_window_timestamp_seconds",
            "Wall-clock time (Unix s) the furnace's last window was scored.",
            labels=["furnace"],
        )
        score = GaugeMetricFamily(
            "furnace_window_score",
            "Score of the furnace's last decided window (absent while it has no data).",
            labels=["furnace"],
        )
        threshold = GaugeMetricFamily(
            "furnace_window_threshold",
            "The threshold that window's score was compared with (abnormal above it).",
            labels=["furnace"],
        )
        drift = GaugeMetricFamily(
            "furnace_code_usage_drift",
            "Total variation distance (0-1) between the furnace's code usage over its last "
            f"{DRIFT_WINDOWS} healthy windows and the bundle's training code_usage.",
            labels=["furnace", "modality"],
        )
        now = m.clock()
        with m._lock:
            for furnace, live in sorted(m._live.items()):
                fresh = now - live.seen_at <= m.no_data_seconds
                seen.add_metric([furnace], live.seen_at)
                for modality, health in sorted(live.health.items()):
                    up.add_metric([furnace, modality], 1.0 if fresh and health == "ok" else 0.0)
                if not fresh:
                    continue
                if live.score is not None and live.threshold is not None:
                    score.add_metric([furnace], live.score)
                    threshold.add_metric([furnace], live.threshold)
                for modality, window in sorted(live.codes.items()):
                    ref = m._code_reference.get(modality)
                    if ref is not None and window.windows and ref.shape == window.counts.shape:
                        drift.add_metric([furnace, modality], total_variation(window.counts, ref))
        yield from (up, seen, score, threshold, drift)


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

    Per-furnace series exist only for furnaces with a label of their own: the ones sharing
    `"other"` would overwrite each other's health and score, so `"other"` gets counters only.

    Args:
        max_furnace_labels: distinct `furnace` label values before ids become `"other"`
            (`FURNACE_MAX_FURNACE_LABELS`).
        furnaces: the configured fleet, registered first.
        no_data_seconds: a furnace whose last window is older than this (wall clock) reports
            every modality down and no score (`FURNACE_NO_DATA_SECONDS`).
        delay_objective_seconds: the detection delay objective (p99), a bucket edge of
            `furnace_detection_delay_seconds` and exported as a gauge.
        clock: wall clock (tests pass their own).
    """

    def __init__(
        self,
        *,
        max_furnace_labels: int = 64,
        furnaces: Iterable[str] = (),
        no_data_seconds: float = 30.0,
        delay_objective_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_furnace_labels < 0:
            msg = f"max_furnace_labels must be >= 0, got {max_furnace_labels}"
            raise ValueError(msg)
        if no_data_seconds <= 0 or delay_objective_seconds <= 0:
            msg = "no_data_seconds and delay_objective_seconds must be > 0"
            raise ValueError(msg)
        self.max_furnace_labels = max_furnace_labels
        self.no_data_seconds = no_data_seconds
        self.delay_objective_seconds = delay_objective_seconds
        self.clock = clock
        self._furnaces: set[str] = set()
        self._lock = threading.RLock()
        self._conditions: tuple[str, ...] = ()  # alert conditions of the served bundle
        self._active: dict[str, str] = {}  # furnace id -> condition of its open episode
        self._active_seen: dict[str, set[str]] = {}  # label -> conditions it ever had
        self._live: dict[str, _Live] = {}  # furnace label -> its last window
        self._code_reference: dict[str, NDArray[np.float64]] = {}
        self._model: dict[str, str] = {}  # furnace_model_info's labels
        # Collectors register in `r` (which refuses duplicates); `registry` is what is
        # exposed: the same families without `_created` samples.
        r = CollectorRegistry(auto_describe=True)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WithoutCreated(r))

        self.model_info = Gauge(
            "furnace_model_info",
            "The loaded model bundle (always 1): `bundle` as loaded, `origin` what chose it "
            "(FURNACE_BUNDLE, model:desired or reload), `desired` the model:desired key "
            "('' unset).",
            ["model_version", "bundle_sha256", "provider", "bundle", "origin", "desired"],
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
            "Window end (sensor time) to detection committed, stream windows only (a POSTed "
            "window may be an archive of any age).",
            buckets=delay_buckets(delay_objective_seconds),
            registry=r,
        )
        self.detections_within_objective = Counter(
            "furnace_detections_within_objective",
            "Detections committed within the delay objective of their window end.",
            registry=r,
        )
        self.detection_delay_objective_seconds = Gauge(
            "furnace_detection_delay_objective_seconds",
            "The detection delay objective (p99): FURNACE_GRACE_SECONDS + 1 s unless "
            "FURNACE_DELAY_OBJECTIVE_SECONDS sets it.",
            registry=r,
        )
        self.detection_delay_objective_seconds.set(delay_objective_seconds)
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
        self.adaptation_shift = Histogram(
            "furnace_score_adaptation_shift_logits",
            "How far per-furnace adaptation lowered a window's score, in logits (0: not at "
            "all), per modality; only bundles with an adaptation section observe it.",
            ["modality"],
            buckets=ADAPTATION_SHIFT_BUCKETS,
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
        self.redis_memory_used_bytes = Gauge(
            "furnace_redis_memory_used_bytes",
            "Redis INFO memory used_memory, polled by the replica.",
            registry=r,
        )
        self.redis_memory_max_bytes = Gauge(
            "furnace_redis_memory_max_bytes",
            "Redis INFO memory maxmemory (0: no limit).",
            registry=r,
        )
        r.register(_FurnaceLive(self))
        # process_cpu_seconds_total, process_resident_memory_bytes, ... (Linux /proc)
        ProcessCollector(registry=r)

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
                self._init_episodes(furnace_id)

    def set_conditions(self, class_names: Iterable[str]) -> None:
        """The served bundle's conditions: every registered furnace's episode counter starts at
        0 for each, so the first episode is an increase Prometheus sees (a series born at 1
        would make `increase()` miss it)."""
        with self._lock:
            names = [c for c in class_names if c != "normal"]
            self._conditions = tuple(dict.fromkeys([*names, CONDITION_UNKNOWN]))
            for furnace_id in self._furnaces:
                self._init_episodes(furnace_id)

    def _init_episodes(self, furnace_id: str) -> None:
        for condition in self._conditions:
            self.alert_episodes.labels(furnace=furnace_id, condition=condition)

    def furnace_label(self, furnace_id: str) -> str:
        """The `furnace` label value: the id if registered, else `"other"`."""
        return furnace_id if furnace_id in self._furnaces else OTHER_FURNACE

    @property
    def furnaces(self) -> frozenset[str]:
        """Ids that have a label of their own."""
        with self._lock:
            return frozenset(self._furnaces)

    # -- setters for the app, the engine and the stream consumer --------------------------

    def set_model_info(
        self,
        *,
        model_version: str,
        bundle_sha256: str,
        provider: str,
        bundle: str = "",
        origin: str = "FURNACE_BUNDLE",
    ) -> None:
        """Replace the model series (one per process): after a reload the old one disappears."""
        with self._lock:
            desired = self._model.get("desired", "")
            self._model = {
                "model_version": model_version,
                "bundle_sha256": bundle_sha256[:12],
                "provider": provider,
                "bundle": bundle,
                "origin": origin,
                "desired": desired,
            }
            self._set_model()

    def set_model_desired(self, value: str | None) -> None:
        """What `{prefix}model:desired` holds now (None: unset), as the `desired` label."""
        with self._lock:
            if self._model.get("desired", "") != (value or ""):
                self._model["desired"] = value or ""
                self._set_model()

    def _set_model(self) -> None:
        self.model_info.clear()
        if "model_version" in self._model:
            self.model_info.labels(**self._model).set(1)

    def window_scored(self, *, source: str, modalities: str) -> None:
        self.windows_scored.labels(source=source, modalities=modalities).inc()

    def window_rejected(self, *, source: str, reason: str) -> None:
        self.windows_rejected.labels(source=source, reason=reason).inc()

    def observe_inference(self, *, modality: str, seconds: float, batch_size: int) -> None:
        """One ORT `run()` over `batch_size` windows of one modality (with memory heads, the
        window graph's and the memory graph's runs together)."""
        self.inference_seconds.labels(modality=modality).observe(seconds)
        self.inference_batch_size.labels(modality=modality).observe(batch_size)

    def observe_detection_delay(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.detection_delay_seconds.observe(seconds)
        if seconds <= self.delay_objective_seconds:
            self.detections_within_objective.inc()

    def observe_http(self, *, route: str, method: str, status_code: int, seconds: float) -> None:
        """`route` is the template (`/v1/furnaces/{furnace_id}/windows`), never the raw path."""
        self.http_request_duration_seconds.labels(
            route=route, method=method, status_class=status_class(status_code)
        ).observe(seconds)

    def observe_score(self, *, modality: str, score: float, raw_score: float | None = None) -> None:
        self.anomaly_score.labels(modality=modality).observe(score)
        if raw_score is not None:
            shift = logit(raw_score) - logit(score)
            self.adaptation_shift.labels(modality=modality).observe(max(shift, 0.0))

    def alert_opened(self, *, furnace_id: str, condition: str) -> None:
        """An alert episode opened: count it and mark it active."""
        furnace = self.furnace_label(furnace_id)
        self.alert_episodes.labels(furnace=furnace, condition=condition).inc()
        self.set_alert_episode(furnace_id=furnace_id, condition=condition)

    def alert_closed(self, *, furnace_id: str, condition: str = "") -> None:
        """The furnace's episode closed, whatever condition it opened or closed under."""
        del condition  # the open episode's condition is tracked here, not trusted from events
        self.set_alert_episode(furnace_id=furnace_id, condition=None)

    def set_alert_active(self, *, furnace_id: str, condition: str, active: bool) -> None:
        """Set the gauge from persisted state (e.g. after a restart) without counting."""
        self.set_alert_episode(furnace_id=furnace_id, condition=condition if active else None)

    def set_alert_episode(self, *, furnace_id: str, condition: str | None) -> None:
        """The furnace's open episode now has `condition` (None: no episode is open).

        `furnace_alert_active{furnace, condition}` is the number of furnaces behind that label
        with an open episode of that condition (1 or 0 for a furnace of its own): an episode
        that changes condition moves from one series to the other, and closing it zeroes the
        one it is in, so no series stays at 1 after the episode closed.
        """
        with self._lock:
            before = self._active.get(furnace_id)
            if before == condition:
                return
            if condition is None:
                del self._active[furnace_id]
            else:
                self._active[furnace_id] = condition
            label = self.furnace_label(furnace_id)
            seen = self._active_seen.setdefault(label, set())
            seen |= {c for c in (before, condition) if c is not None}
            for c in seen:
                count = sum(
                    1
                    for f, active in self._active.items()
                    if active == c and self.furnace_label(f) == label
                )
                self.alert_active.labels(furnace=label, condition=c).set(count)

    def window_recorded(self, det: Detection, *, usable: Iterable[str] = ()) -> None:
        """A scored window of a furnace with its own label: its health (`furnace_modality_up`),
        its score and threshold when decided, and the codes of the `usable` (healthy)
        modalities for the code-usage drift. Ids sharing `"other"` are skipped."""
        if det.furnace_id not in self._furnaces:
            return
        with self._lock:
            live = self._live.get(det.furnace_id)
            if live is None:
                live = self._live[det.furnace_id] = _Live(seen_at=0.0, health={})
            live.seen_at = self.clock()
            live.health = dict(det.health)
            if det.decided:
                live.score, live.threshold = float(det.score), float(det.threshold)
            for modality in usable:
                part = det.per_modality.get(modality)
                ref = self._code_reference.get(modality)
                if part is None or ref is None:
                    continue
                window = live.codes.get(modality)
                if window is None or window.counts.shape != ref.shape:
                    window = live.codes[modality] = _CodeWindow(np.zeros(ref.shape[0]))
                window.add(part.codes)

    def set_modality_up(self, *, furnace_id: str, modality: str, up: bool) -> None:
        """Set one modality's health directly (tests and tools; the service records windows)."""
        if furnace_id not in self._furnaces:
            return
        with self._lock:
            live = self._live.get(furnace_id)
            if live is None:
                live = self._live[furnace_id] = _Live(seen_at=self.clock(), health={})
            live.seen_at = self.clock()
            live.health[modality] = "ok" if up else "down"

    def set_code_reference(self, usage: Mapping[str, Sequence[float]]) -> None:
        """The served bundle's training code usage per modality (the drift reference)."""
        with self._lock:
            self._code_reference = {m: np.asarray(u, dtype=np.float64) for m, u in usage.items()}

    def set_redis_memory(self, *, used_bytes: int, max_bytes: int) -> None:
        self.redis_memory_used_bytes.set(used_bytes)
        self.redis_memory_max_bytes.set(max_bytes)

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
