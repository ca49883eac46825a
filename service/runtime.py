"""What the routes and the stream consumer share, one per app: settings, metrics, the inference
executor, the alert policy, the loaded engine, the Redis client and the consumer, plus the
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
from typing import TypeVar

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
from service.store import CommitResult, Keys
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
    executor: ThreadPoolExecutor
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

    async def score(self, windows: list[Window]) -> list[Detection]:
        engine = self.current_engine()

        def observe(modality: str, seconds: float, batch: int) -> None:
            self.metrics.observe_inference(modality=modality, seconds=seconds, batch_size=batch)

        return await self.in_executor(lambda: engine.score(windows, observe))

    async def reload(self, name: str) -> tuple[str, Engine]:
        """Verify, build and warm the bundle `name`, then swap it in (docs/design/serving.md 3.2).

        The caller holds `reload_lock`. Returns (previous model version, new engine).

        Raises:
            ReloadRefusedError: the bundle failed a check; the old engine keeps serving.
        """
        path = self.settings.bundle_path(name)
        old = self.current_engine()
        threads = self.settings.intra_op_threads
        try:
            engine = await asyncio.to_thread(Engine, path, intra_op_threads=threads)
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
        )
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
                await self.reload(name)
            except (ReloadRefusedError, ValueError) as exc:
                logger.warning("model:desired = %r not loaded: %s", name, exc)

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
            m.observe_score(modality=modality, score=part.score)
        known = det.furnace_id in m.furnaces or source == "redis"
        if known:
            for modality, health in det.health.items():
                m.set_modality_up(furnace_id=det.furnace_id, modality=modality, up=health == "ok")
        if result is not None and result.applied:
            delay = time.time() - det.window_end
            if 0.0 <= delay < 3600.0:  # replays run sensor time ahead of the wall clock
                m.observe_detection_delay(delay)
            for ev in result.events:
                if ev.kind == "opened":
                    m.alert_opened(furnace_id=det.furnace_id, condition=ev.condition)
                elif ev.kind == "closed":
                    m.alert_closed(furnace_id=det.furnace_id, condition=ev.condition)
