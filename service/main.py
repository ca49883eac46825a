"""The FastAPI application: `create_app(settings)` builds it, lifespan loads the bundle, connects
Redis and runs the stream consumer. Nothing is created at import (STYLE.md 8).

`uvicorn service.main:app --factory`-style use goes through `app_from_env()`; `furnace serve`
calls it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.alerting import AlertPolicy
from service.bundle import BundleError
from service.engine import Detection, Engine
from service.entries import as_text
from service.ingest import StreamConsumer
from service.metrics import Metrics
from service.schemas import BUNDLE_NAME
from service.settings import Settings
from service.store import CommitResult, Keys

logger = logging.getLogger(__name__)
T = TypeVar("T")
WINDOWS_ROUTE = "/v1/furnaces/{furnace_id}/windows"
NONFINITE_ERRORS = frozenset({"finite_number"})


@dataclass
class Runtime:
    """Everything the routes and the consumer share; one per app."""

    settings: Settings
    metrics: Metrics
    executor: ThreadPoolExecutor
    policy: AlertPolicy  # alert episodes, for HTTP and Redis detections alike
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
        if self.engine is None:
            msg = f"no model loaded: {self.load_error or 'starting'}"
            raise RuntimeError(msg)
        return self.engine

    async def in_executor(self, fn: Callable[[], T]) -> T:
        """Run blocking work (ONNX Runtime, bundle loading) in the inference executor."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def score(self, windows: Any) -> list[Detection]:
        engine = self.current_engine()

        def observe(modality: str, seconds: float, batch: int) -> None:
            self.metrics.observe_inference(modality=modality, seconds=seconds, batch_size=batch)

        return await self.in_executor(lambda: engine.score(windows, observe))

    async def reload(self, name: str) -> tuple[str, Engine]:
        """Verify, build and warm the bundle `name`, then swap it in (SERVING.md 3.2).

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
        logger.info("reloaded: %s -> %s (%s)", old.model_version, engine.model_version, path)
        return old.model_version, engine

    async def follow_desired(self) -> None:
        """Reload when `{prefix}model:desired` names another bundle than the last one seen
        (SERVING.md 3.2: each replica reloads itself). A refused bundle is not retried until
        the key changes again; while another reload runs, the next poll looks again."""
        assert self.client is not None
        raw = await self.client.get(Keys(self.settings.key_prefix).model_desired)
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


class ReloadRefusedError(RuntimeError):
    """A bundle that failed verification, warm-up or the window check; nothing changed."""


def _consumer_failed(task: asyncio.Task[None], runtime: Runtime) -> None:
    if task.cancelled() or task.exception() is None:
        return
    exc = task.exception()
    logger.error("the stream consumer died: %r", exc, exc_info=exc)
    runtime.load_error = f"stream consumer died: {exc!r}"
    if runtime.settings.exit_on_consumer_failure:
        # A live HTTP server with a dead consumer is the failure nobody notices (SERVING 5.3).
        os._exit(3)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    rt: Runtime = app.state.runtime
    settings = rt.settings
    path = settings.bundle_path()
    try:
        rt.engine = await rt.in_executor(
            lambda: Engine(path, intra_op_threads=settings.intra_op_threads)
        )
    except (OSError, ValueError) as exc:
        rt.load_error = str(exc)
        rt.executor.shutdown(wait=False)
        msg = f"cannot serve bundle {path}: {exc}"
        raise RuntimeError(msg) from exc
    rt.metrics.set_model_info(
        model_version=rt.engine.model_version,
        bundle_sha256=rt.engine.bundle_sha256,
        provider=rt.engine.provider,
    )
    logger.info("serving %s (%s) from %s", rt.engine.model_version, rt.engine.provider, path)
    rt.bundle_name = settings.bundle
    rt.client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=10.0)
    if settings.model_poll_seconds > 0:
        rt.watch_task = asyncio.create_task(rt.watch_desired(), name="model-desired")
    try:
        if settings.ingest:
            rt.consumer = StreamConsumer(
                settings,
                rt.current_engine,
                rt.metrics,
                rt.score,
                record=rt.record,
                policy=rt.policy,
                group_start_id=app.state.group_start_id,
            )
            await rt.consumer.start()  # refuses a shard layout mismatch
            rt.consumer_task = asyncio.create_task(rt.consumer.run(), name="stream-consumer")
            rt.consumer_task.add_done_callback(lambda t: _consumer_failed(t, rt))
    except BaseException:
        await _shutdown(rt)
        raise
    try:
        yield
    finally:
        await _shutdown(rt)


async def _shutdown(rt: Runtime) -> None:
    """SERVING.md 5.4: stop reading, let the batch in hand finish and ack, release the lease,
    close the Redis clients; whatever was not acked stays pending for the restart."""
    rt.draining = True
    if rt.watch_task is not None:
        rt.watch_task.cancel()
    if rt.consumer is not None:
        rt.consumer.stop()  # the short BLOCK returns; the batch in hand finishes and acks
        task = rt.consumer_task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=15.0)
            except TimeoutError:
                task.cancel()
            except Exception:  # noqa: BLE001 - logged by the done callback
                pass
        await rt.consumer.close()
    if rt.client is not None:
        await rt.client.aclose()
    rt.executor.shutdown(wait=False, cancel_futures=True)


def create_app(settings: Settings | None = None, *, group_start_id: str = "$") -> FastAPI:
    """Build the app. `group_start_id="0"` makes new consumer groups read existing history
    (tests, backfills); production starts at `$` so a first start skips old backlog."""
    from service.api import router

    settings = settings or Settings()
    metrics = Metrics(max_furnace_labels=settings.max_furnace_labels, furnaces=settings.furnaces)
    runtime = Runtime(
        settings=settings,
        metrics=metrics,
        executor=ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="inference"),
        policy=AlertPolicy(k=settings.alert_k, n=settings.alert_n, m=settings.alert_m),
    )
    app = FastAPI(
        title="furnace-sentinel",
        summary="Abnormal-condition detection for electro-fused magnesia furnaces",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.group_start_id = group_start_id
    app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]

    @app.middleware("http")
    async def _timing(request: Request, call_next: Callable[[Request], Any]) -> Response:
        t0 = time.perf_counter()
        status = 500
        try:
            response: Response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.observe_http(
                route=template,
                method=request.method,
                status_code=status,
                seconds=time.perf_counter() - t0,
            )

    return app


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with only type, loc and msg: echoing `input` breaks on NaN (SERVING.md 5.2)."""
    errors = [
        {"type": str(e.get("type")), "loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg")}
        for e in exc.errors()
    ]
    route = getattr(request.scope.get("route"), "path", "")
    if route == WINDOWS_ROUTE:
        types = {e["type"] for e in errors}
        reason = "nonfinite" if types & NONFINITE_ERRORS else "shape"
        runtime: Runtime = request.app.state.runtime
        runtime.metrics.window_rejected(source="http", reason=reason)
    return JSONResponse({"detail": errors}, status_code=422)


def app_from_env() -> FastAPI:
    return create_app(Settings())


__all__ = ["Runtime", "StarletteHTTPException", "app_from_env", "create_app"]
