"""What the routes and the stream consumer share, one per app: settings, metrics, the worker
pools (stream inference, HTTP inference, HTTP decoding; docs/service.md "Worker pools"), the
alert policy, the loaded engine, the Redis client and the consumer, plus the
model reload (docs/design/serving.md 3.2) and per-detection metrics. `service/main.py` builds and
runs it, `service/api.py` reads it through the dependencies of `service/deps.py`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis

from service.alerting import AlertPolicy
from service.bundle import BundleError
from service.detection import Detection
from service.engine import Engine
from service.entries import as_text
from service.ingest import StreamConsumer
from service.metrics import Metrics
from service.schemas import BUNDLE_NAME
from service.settings import Settings
from service.store import CommitResult, Keys, recent_codes, recent_raw_scores
from service.types import Window

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ReloadRefusedError(RuntimeError):
    """A bundle that failed verification, warm-up or the window check; nothing changed."""


class NotReadyError(RuntimeError):
    """The runtime lacks what the caller needs yet: no model loaded, or Redis not connected."""


@dataclass
class Runtime:
    """Everything the routes and the consumer share; one per app."""

    settings: Settings
    metrics: Metrics
    executor: ThreadPoolExecutor  # ONNX Runtime for the streams (and bundle loading)
    http_executor: ThreadPoolExecutor = field(  # ONNX Runtime for POSTed windows
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="http-inference")
    )
    decode_executor: ThreadPoolExecutor = field(  # POSTed bodies -> windows (images)
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="decode")
    )
    engine: Engine | None = None
    client: aioredis.Redis | None = None
    consumer: StreamConsumer | None = None
    consumer_task: asyncio.Task[None] | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    draining: bool = False
    load_error: str | None = None
    bundle_name: str = ""  # what the engine was loaded as (FURNACE_BUNDLE or a reload)
    desired_seen: str | None = None  # the last `model:desired` value acted on
    watch_task: asyncio.Task[None] | None = None
    redis_task: asyncio.Task[None] | None = None  # Redis memory and model:desired for /metrics
    http_pending: int = 0  # HTTP windows waiting for or in inference

    def current_engine(self) -> Engine:
        """The engine serving now.

        Raises:
            NotReadyError: no model is loaded (starting, or the bundle failed to load).
        """
        if self.engine is None:
            msg = f"no model loaded: {self.load_error or 'starting'}"
            raise NotReadyError(msg)
        return self.engine

    @property
    def policy(self) -> AlertPolicy:
        """The alert policy of the engine serving now, for HTTP and Redis detections alike:
        FURNACE_ALERT_K/N/M where set, else the bundle's calibrated `alert_policy`, else
        3 of 4 and 3 (checked when the bundle is loaded, so this does not raise then).

        Raises:
            NotReadyError: no model is loaded.
        """
        return self.settings.alert_policy(self.current_engine().manifest.alert_policy)

    def redis(self) -> aioredis.Redis:
        """The shared Redis client.

        Raises:
            NotReadyError: the app has not connected yet (or is shutting down).
        """
        if self.client is None:
            msg = "Redis is not connected yet; retry shortly"
            raise NotReadyError(msg)
        return self.client

    async def in_executor(self, fn: Callable[[], T]) -> T:
        """Run blocking work (ONNX Runtime, bundle loading) in the inference executor."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def decode(self, fn: Callable[[], T]) -> T:
        """Run a POSTed body's decoding in its own bounded pool: a costly body never holds
        the inference workers the streams need (issue 14 item 3)."""
        return await asyncio.get_running_loop().run_in_executor(self.decode_executor, fn)

    async def score(self, windows: list[Window], *, source: str = "redis") -> list[Detection]:
        """Score windows in the executor of their source: streams and HTTP have their own, so
        HTTP load never queues a stream window behind it."""
        engine = self.current_engine()

        def observe(modality: str, seconds: float, batch: int) -> None:
            self.metrics.observe_inference(modality=modality, seconds=seconds, batch_size=batch)

        await self.prime_memory(engine, {w.furnace_id for w in windows})
        pool = self.http_executor if source == "http" else self.executor
        return await asyncio.get_running_loop().run_in_executor(
            pool, lambda: engine.score(windows, observe)
        )

    async def prime_memory(self, engine: Engine, furnaces: set[str]) -> None:
        """Rebuild the engine's per-furnace histories (the memory heads' codes,
        docs/service.md "Memory"; per-furnace adaptation's raw scores, "Per-furnace
        adaptation") of each furnace `engine` has not primed yet from the furnace's recent
        detections: after a restart, a reload, or when a replica adopts a furnace, before its
        first window is scored. Only detections of the engine's model version, and only the
        window ends a history can reach, are read (bounded XREVRANGE). A failed read is
        logged and the furnace goes on with what the engine holds (its history fills again
        as windows are scored)."""
        keys = Keys(self.settings.key_prefix)
        memory, adaptation = engine.manifest.memory, engine.manifest.adaptation
        jobs: list[tuple[str, Any, Any, float, int]] = []
        if engine.history is not None and memory is not None:
            reach = 2 * memory.slots * memory.stride_windows + 64
            jobs.append(("memory", engine.history, recent_codes, memory.span_seconds, reach))
        if engine.adapter is not None and adaptation is not None:
            reach = adaptation.span + 64
            seconds = adaptation.window_seconds
            jobs.append(("adaptation", engine.adapter, recent_raw_scores, seconds, reach))
        for furnace_id in sorted(furnaces):
            for what, history, read, seconds, reach in jobs:
                if history.primed(furnace_id):
                    continue
                try:
                    records = await asyncio.wait_for(
                        read(
                            self.redis(),
                            keys,
                            furnace_id,
                            model_version=engine.model_version,
                            seconds=seconds,
                            max_entries=reach,
                        ),
                        self.settings.redis_read_timeout_seconds,
                    )
                except Exception as exc:  # noqa: BLE001 - Redis down or slow: score without it
                    history.mark_primed(furnace_id)
                    logger.warning(
                        "%s history of %s not rebuilt from its stored detections (%r); "
                        "scoring on with what this engine holds",
                        what,
                        furnace_id,
                        exc,
                    )
                    continue
                stored = history.prime(furnace_id, records)
                logger.info(
                    "%s history of %s rebuilt from %d stored detections (%d values)",
                    what,
                    furnace_id,
                    len(records),
                    stored,
                )

    async def reload(self, name: str, *, origin: str = "reload") -> tuple[str, Engine]:
        """Verify, build and warm the bundle `name`, then swap it in (docs/design/serving.md 3.2).

        The caller holds `reload_lock`. Returns (previous model version, new engine).

        Raises:
            ReloadRefusedError: the bundle failed a check; the old engine keeps serving.
        """
        path = self.settings.bundle_path(name)
        old = self.current_engine()
        threads = self.settings.intra_op_threads
        trust = self.settings.bundle_trust()
        try:
            engine = await asyncio.to_thread(Engine, path, intra_op_threads=threads, trust=trust)
        except (BundleError, OSError) as exc:
            self.metrics.model_reload(outcome="failed")
            logger.warning("reload of %s refused: %s", path, exc)
            msg = f"bundle refused, still serving {old.model_version}: {exc}"
            raise ReloadRefusedError(msg) from exc
        try:
            policy = self.settings.alert_policy(engine.manifest.alert_policy)
        except ValueError as exc:
            self.metrics.model_reload(outcome="failed")
            msg = f"bundle refused, still serving {old.model_version}: {exc}"
            raise ReloadRefusedError(msg) from exc
        if engine.manifest.window != old.manifest.window:
            self.metrics.model_reload(outcome="failed")
            msg = f"bundle refused, still serving {old.model_version}: its window geometry"
            msg += " differs; restart the service with FURNACE_BUNDLE to change it"
            raise ReloadRefusedError(msg)
        self.engine = engine  # in-flight work keeps the engine it already holds
        self.bundle_name = name
        self.metrics.model_reload(outcome="ok")
        self.metrics.set_model_info(
            model_version=engine.model_version,
            bundle_sha256=engine.bundle_sha256,
            provider=engine.provider,
            bundle=name,
            origin=origin,
        )
        self.metrics.set_conditions(engine.manifest.class_names)
        self.metrics.set_code_reference(engine.manifest.code_usage)
        logger.info(
            "reloaded: %s -> %s (%s), alert policy %d of %d, close after %d",
            old.model_version,
            engine.model_version,
            path,
            policy.k,
            policy.n,
            policy.m,
        )
        return old.model_version, engine

    async def follow_desired(self) -> None:
        """Reload when `{prefix}model:desired` names another bundle than the last one seen
        (docs/design/serving.md 3.2: each replica reloads itself). A refused bundle is not retried
        until the key changes again; while another reload runs, the next poll looks again.
        """
        raw = await self.redis().get(Keys(self.settings.key_prefix).model_desired)
        if raw is None:
            return
        name = as_text(raw)
        if name == self.desired_seen or self.reload_lock.locked():
            return
        self.desired_seen = name
        if name == self.bundle_name:
            return
        if not re.match(BUNDLE_NAME, name):  # the reload route's rule: no paths from Redis
            logger.warning("model:desired = %r is not a bundle folder name", name)
            return
        async with self.reload_lock:
            try:
                await self.reload(name, origin="model:desired")
            except (ReloadRefusedError, ValueError) as exc:
                logger.warning("model:desired = %r not loaded: %s", name, exc)
                return
        logger.warning(
            "serving %r from %smodel:desired instead of FURNACE_BUNDLE=%r (docs/service.md, "
            "'model:desired')",
            name,
            self.settings.key_prefix,
            self.settings.bundle,
        )

    async def announce_desired(self) -> str | None:
        """At start: read `{prefix}model:desired` once and say loudly when it will override
        FURNACE_BUNDLE (it does on the first poll), or that it is ignored
        (FURNACE_MODEL_POLL_SECONDS=0). Returns the key's value (None: unset or unreadable)."""
        key = Keys(self.settings.key_prefix).model_desired
        try:
            raw = await asyncio.wait_for(self.redis().get(key), 2.0)
        except Exception as exc:  # noqa: BLE001 - Redis down at start: the watch retries
            logger.warning("cannot read %s at start: %r", key, exc)
            return None
        value = None if raw is None else as_text(raw)
        self.metrics.set_model_desired(value)
        if value is None or value == self.settings.bundle:
            return value
        if self.settings.model_poll_seconds > 0:
            logger.warning(
                "%s = %r OVERRIDES FURNACE_BUNDLE=%r: this replica will serve %r within %g s. "
                "Serve FURNACE_BUNDLE instead: `redis-cli DEL %s`, or set "
                "FURNACE_MODEL_POLL_SECONDS=0 to ignore the key",
                key,
                value,
                self.settings.bundle,
                value,
                self.settings.model_poll_seconds,
                key,
            )
        else:
            logger.warning(
                "%s = %r is IGNORED (FURNACE_MODEL_POLL_SECONDS=0): serving FURNACE_BUNDLE=%r",
                key,
                value,
                self.settings.bundle,
            )
        return value

    async def poll_redis(self) -> None:
        """Redis INFO memory and the `model:desired` key, for /metrics."""
        client = self.redis()
        info = await client.info("memory")
        self.metrics.set_redis_memory(
            used_bytes=int(info.get("used_memory", 0)), max_bytes=int(info.get("maxmemory", 0))
        )
        raw = await client.get(Keys(self.settings.key_prefix).model_desired)
        self.metrics.set_model_desired(None if raw is None else as_text(raw))

    async def watch_redis(self, every_seconds: float = 5.0) -> None:
        """`poll_redis` every `every_seconds` until the app stops."""
        while not self.draining:
            try:
                await asyncio.wait_for(self.poll_redis(), 10.0)
            except Exception as exc:  # noqa: BLE001 - Redis down: keep serving, retry later
                logger.debug("cannot poll Redis for metrics: %r", exc)
            await asyncio.sleep(every_seconds)

    async def watch_desired(self) -> None:
        """Poll `model:desired` every `model_poll_seconds` until the app stops."""
        while not self.draining:
            try:
                await self.follow_desired()
            except Exception as exc:  # noqa: BLE001 - Redis down: keep serving, retry later
                logger.warning("cannot read model:desired: %r", exc)
            await asyncio.sleep(self.settings.model_poll_seconds)

    def record(self, det: Detection, result: CommitResult | None, source: str) -> None:
        """Metrics of one scored (and maybe committed) detection."""
        m = self.metrics
        m.window_scored(source=source, modalities=det.decided_by)
        for modality, part in det.per_modality.items():
            m.observe_score(modality=modality, score=part.score, raw_score=part.raw_score)
        if source == "redis":
            # A window read from a stream belongs to a discovered furnace, even when it is
            # scored (rebuilt from history at adoption) before discovery registers it:
            # registering here keeps it from reporting as a phantom `other`.
            m.register_furnaces([det.furnace_id])
        usable = [mod for mod, health in det.health.items() if health == "ok"]
        m.window_recorded(det, usable=usable)
        if result is not None and result.applied:
            delay = time.time() - det.window_end
            # the stream path's delay only: a POSTed window may be an archive of any age
            if source == "redis" and 0.0 <= delay < 3600.0:
                m.observe_detection_delay(delay)
            for ev in result.events:
                if ev.kind == "opened":
                    m.alert_opened(furnace_id=det.furnace_id, condition=ev.condition)
        if result is not None:
            # The committed (or stored) state says which episode is open, whatever events led
            # there: opened under one condition and closed under another, or open across a
            # restart.
            episode = result.state.episode
            m.set_alert_episode(
                furnace_id=det.furnace_id, condition=None if episode is None else episode.condition
            )
