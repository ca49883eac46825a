"""HTTP routes (ARCHITECTURE.md "Interfaces"): windows in, detections and state out, model
admin, health and metrics. Inference runs in the executor, never on the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from service.auth import require_key
from service.engine import Engine
from service.images import ImageError
from service.main import ReloadRefusedError, Runtime
from service.requests import RequestError, window_from_request
from service.schemas import DetectionOut, FurnaceState, ReloadIn, WindowIn
from service.store import Keys, commit_detection, detection_dict, load_state, parse_state

logger = logging.getLogger(__name__)
router = APIRouter()
FurnaceId = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="furnace id")


def _rt(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _episode(furnace_id: str, stored: dict[str, str]) -> dict[str, Any] | None:
    """The open alert episode in a stored state hash (None when none is open)."""
    try:
        return parse_state(furnace_id, stored).episode_dict()
    except ValueError:
        logger.warning("unreadable alert state for %s", furnace_id)
        return None


@router.post(
    "/v1/furnaces/{furnace_id}/windows",
    response_model=DetectionOut,
    dependencies=[Depends(require_key("write"))],
    summary="Score one window of current and/or camera frames",
)
async def post_window(
    request: Request, body: WindowIn, furnace_id: str = FurnaceId
) -> dict[str, Any]:
    rt = _rt(request)
    settings = rt.settings
    engine = rt.current_engine()
    if rt.http_pending >= settings.http_queue:
        rt.metrics.window_rejected(source="http", reason="busy")
        msg = f"{rt.http_pending} windows are waiting for inference; retry shortly"
        raise HTTPException(503, msg, headers={"Retry-After": "1"})
    rt.http_pending += 1
    try:
        return await _score_window(rt, body, furnace_id, engine)
    finally:
        rt.http_pending -= 1


async def _score_window(
    rt: Runtime, body: WindowIn, furnace_id: str, engine: Engine
) -> dict[str, Any]:
    settings = rt.settings
    try:
        window, notes = await rt.in_executor(
            lambda: window_from_request(
                body, furnace_id, engine.manifest.window, settings, received_at=time.time()
            )
        )
    except (RequestError, ImageError) as exc:
        # 413 is for the body size (the app's limit); a body that parsed but holds too many
        # samples or frames, or an image too large to decode, is unprocessable content.
        rt.metrics.window_rejected(source="http", reason=exc.reason)
        raise HTTPException(422, str(exc)) from exc
    detections = await rt.score([window])
    det = detections[0]
    out = detection_dict(det)
    out.update(notes)
    assert rt.client is not None
    try:
        result = await commit_detection(
            rt.client,
            Keys(settings.key_prefix),
            det,
            rt.policy,
            detections_maxlen=settings.detections_maxlen,
            alerts_maxlen=settings.alerts_maxlen,
            extra={"source": "http"},
        )
    except RedisError as exc:
        logger.warning("cannot commit an HTTP detection: %r", exc)
        msg = "the alert state store (Redis) is unavailable; retry later"
        raise HTTPException(503, msg, headers={"Retry-After": "5"}) from exc
    rt.record(det, result, "http")
    out["state_applied"] = result.applied
    out["episode"] = result.state.episode_dict() if result.applied else None
    return out


@router.get("/v1/furnaces/{furnace_id}/state", response_model=FurnaceState)
async def furnace_state(request: Request, furnace_id: str = FurnaceId) -> dict[str, Any]:
    """The latest detection, the open alert episode (if any) and per-modality health."""
    rt = _rt(request)
    assert rt.client is not None
    stored = await load_state(rt.client, Keys(rt.settings.key_prefix), furnace_id)
    if "detection" not in stored:
        raise HTTPException(404, f"no detections for furnace {furnace_id!r} yet")
    det = json.loads(stored["detection"])
    return {
        "furnace_id": furnace_id,
        "last_window_end": float(det["window_end"]),
        "detection": det,
        "episode": _episode(furnace_id, stored),
        "health": det.get("health", {}),
    }


@router.get("/v1/furnaces")
async def furnaces(request: Request) -> dict[str, Any]:
    """Every furnace with detections, and the ones this replica reads streams of."""
    rt = _rt(request)
    assert rt.client is not None
    keys = Keys(rt.settings.key_prefix)
    known = sorted(
        m.decode() if isinstance(m, bytes) else str(m)
        for m in await rt.client.smembers(keys.furnaces)
    )
    reading = sorted(rt.consumer.status.furnaces) if rt.consumer else []
    out = []
    for furnace_id in sorted(set(known) | set(reading)):
        stored = await load_state(rt.client, keys, furnace_id)
        det = json.loads(stored["detection"]) if "detection" in stored else None
        out.append(
            {
                "furnace_id": furnace_id,
                "read_by_this_replica": furnace_id in reading,
                "last_window_end": det["window_end"] if det else None,
                "condition": det["condition"] if det else None,
                "score": det["score"] if det else None,
                "health": det["health"] if det else {},
                "episode": _episode(furnace_id, stored),
            }
        )
    return {"furnaces": out}


@router.get("/v1/model")
async def model_info(request: Request) -> dict[str, Any]:
    """A summary of the served bundle's manifest."""
    rt = _rt(request)
    engine = rt.current_engine()
    m = engine.manifest
    raw = m.raw
    return {
        "bundle": rt.bundle_name,
        "name": m.name,
        "model_version": m.model_version,
        "format_version": m.format_version,
        "bundle_sha256": engine.bundle_sha256,
        "provider": engine.provider,
        "created_at": raw.get("created_at"),
        "window": raw.get("window"),
        "class_names": list(m.class_names),
        "codebook_size": m.codebook_size,
        "head": m.head,
        "thresholds": raw.get("thresholds"),
        "metrics": (raw.get("metrics") or {}).get("settings"),
        "training": {k: v for k, v in (raw.get("training") or {}).items() if k != "config"},
    }


@router.post(
    "/v1/admin/reload",
    dependencies=[Depends(require_key("admin"))],
    summary="Load a bundle from the models directory: verify, warm, then swap",
)
async def reload_model(request: Request, body: ReloadIn) -> dict[str, Any]:
    rt = _rt(request)
    if rt.reload_lock.locked():
        raise HTTPException(status.HTTP_409_CONFLICT, "a reload is already running")
    async with rt.reload_lock:
        path = rt.settings.bundle_path(body.bundle)
        try:
            old, engine = await rt.reload(body.bundle)
        except ReloadRefusedError as exc:
            raise HTTPException(422, str(exc)) from exc
        if body.fleet:
            assert rt.client is not None
            try:  # the other replicas follow on their next poll of model:desired
                await rt.client.set(Keys(rt.settings.key_prefix).model_desired, body.bundle)
                rt.desired_seen = body.bundle
            except RedisError as exc:
                msg = f"reloaded here, but model:desired could not be set: {exc!r}"
                raise HTTPException(503, msg, headers={"Retry-After": "5"}) from exc
        return {
            "previous": old,
            "model_version": engine.model_version,
            "bundle": str(path),
            "fleet": body.fleet,
        }


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready: bundle loaded, Redis answers, shard lease held, consumer loop alive and recent,
    not draining (SERVING.md 5.3). 503 lists the failing checks."""
    rt = _rt(request)
    checks: dict[str, Any] = {"model": rt.engine is not None, "draining": rt.draining}
    try:
        assert rt.client is not None
        checks["redis"] = bool(await asyncio.wait_for(rt.client.ping(), 2.0))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["redis"] = False
        checks["redis_error"] = str(exc)[:200] or type(exc).__name__
    ok = checks["model"] and checks["redis"] and not rt.draining
    if rt.consumer is not None:
        st = rt.consumer.status
        fresh = time.monotonic() - st.last_loop < 3 * rt.settings.block_ms / 1000.0 + 5.0
        alive = st.running and rt.consumer_task is not None and not rt.consumer_task.done()
        checks.update(lease=st.lease_held, consumer=alive and fresh, streams=st.streams)
        if st.error:
            checks["consumer_error"] = st.error
        ok = ok and st.lease_held and alive and fresh
    if rt.load_error:
        checks["error"] = rt.load_error
        ok = False
    failing = sorted(k for k in ("model", "redis", "lease", "consumer") if checks.get(k) is False)
    if rt.draining:
        failing.append("draining")
    body = {"ready": bool(ok), "failing": failing, "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    body, content_type = _rt(request).metrics.render()
    return Response(body, media_type=content_type)
