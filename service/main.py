"""The FastAPI application: `create_app(settings)` builds it (routes from service/api.py, the
shared `Runtime` of service/runtime.py, exception handlers, timing middleware), lifespan loads
the bundle, connects Redis and runs the stream consumer. Nothing is created at import
(docs/design/style.md 8).

`uvicorn service.main:app --factory`-style use goes through `app_from_env()`; `furnace serve`
calls it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.api import WINDOWS_ROUTE, router
from service.docs import document_routes, serve_docs
from service.engine import Engine
from service.ingest import StreamConsumer
from service.metrics import Metrics
from service.openapi import document_errors
from service.runtime import Runtime
from service.server import RequestLimit
from service.settings import Settings

logger = logging.getLogger(__name__)
NONFINITE_ERRORS = frozenset({"finite_number"})


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
            lambda: Engine(
                path, intra_op_threads=settings.intra_op_threads, trust=settings.bundle_trust()
            )
        )
        policy = settings.alert_policy(rt.engine.manifest.alert_policy)
    except (OSError, ValueError) as exc:
        rt.load_error = str(exc)
        _stop_executors(rt)
        msg = f"cannot serve bundle {path}: {exc}"
        raise RuntimeError(msg) from exc
    rt.metrics.set_model_info(
        model_version=rt.engine.model_version,
        bundle_sha256=rt.engine.bundle_sha256,
        provider=rt.engine.provider,
        bundle=settings.bundle,
    )
    rt.metrics.set_conditions(rt.engine.manifest.class_names)
    rt.metrics.set_code_reference(rt.engine.manifest.code_usage)
    logger.info(
        "serving %s (%s) from %s, signed by %s; alert policy %d of %d, close after %d",
        rt.engine.model_version,
        rt.engine.provider,
        path,
        rt.engine.manifest.signed_by or "nobody (FURNACE_ALLOW_UNSIGNED_BUNDLES)",
        policy.k,
        policy.n,
        policy.m,
    )
    rt.bundle_name = settings.bundle
    rt.client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=10.0)
    await rt.announce_desired()  # model:desired overrides FURNACE_BUNDLE: say so at start
    rt.redis_task = asyncio.create_task(rt.watch_redis(), name="redis-metrics")
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
                policy=lambda: rt.policy,
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
    """docs/design/serving.md 5.4: stop reading, let the batch in hand finish and ack, release the
    lease, close the Redis clients; whatever was not acked stays pending for the restart.
    """
    rt.draining = True
    for watcher in (rt.watch_task, rt.redis_task):
        if watcher is not None:
            watcher.cancel()
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
    _stop_executors(rt)


def _stop_executors(rt: Runtime) -> None:
    for pool in (rt.executor, rt.http_executor, rt.decode_executor):
        pool.shutdown(wait=False, cancel_futures=True)


def create_app(settings: Settings | None = None, *, group_start_id: str = "$") -> FastAPI:
    """Build the app. `group_start_id="0"` makes new consumer groups read existing history
    (tests, backfills); production starts at `$` so a first start skips old backlog."""
    settings = settings or Settings()
    metrics = Metrics(
        max_furnace_labels=settings.max_furnace_labels,
        furnaces=settings.furnaces,
        no_data_seconds=settings.no_data_seconds,
        delay_objective_seconds=settings.delay_objective(),
    )
    runtime = Runtime(
        settings=settings,
        metrics=metrics,
        executor=ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="inference"),
        http_executor=ThreadPoolExecutor(
            settings.http_inference_workers, thread_name_prefix="http-inference"
        ),
        decode_executor=ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode"),
    )
    app = FastAPI(
        title="furnace-sentinel",
        summary="Abnormal-condition detection for electro-fused magnesia furnaces",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
        docs_url=None,  # served from local files by serve_docs: no CDN needed
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.group_start_id = group_start_id
    app.include_router(router)
    # requests in progress, not connections (service/server.py; issue 14 item 4)
    app.add_middleware(RequestLimit, limit=settings.http_concurrency)
    document_errors(app)  # every error status in /openapi.json (service/openapi.py)
    document_routes(app)
    serve_docs(app)
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
    """422 with only type, loc and msg: echoing `input` breaks on NaN (docs/design/serving.md
    5.2)."""
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


__all__ = ["app_from_env", "create_app", "lifespan"]
