"""HTTP routes (docs/design/architecture.md "Interfaces"): windows in, detections and state out,
model admin, health and metrics. Inference runs in the executor, never on the event loop. Routes get
the runtime, engine and Redis client through the dependencies of service/deps.py (503 while one is
not ready); every JSON route declares its response model (service/schemas.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable
from pathlib import PurePath
from typing import Any, TypeVar

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, status
from redis.exceptions import RedisError

from service.auth import require_key
from service.bundle import BundleAlertPolicy
from service.deps import EngineDep, RedisDep, RuntimeDep
from service.engine import Engine
from service.entries import as_text
from service.images import ImageError
from service.requests import RequestError, window_from_request
from service.runtime import NotReadyError, ReloadRefusedError, Runtime
from service.schemas import (
    DetectionOut,
    FurnacesOut,
    FurnaceState,
    HealthOut,
    ModelOut,
    ReadyChecks,
    ReadyOut,
    ReloadIn,
    ReloadOut,
    WindowIn,
)
from service.store import Keys, commit_detection, load_state, parse_state

logger = logging.getLogger(__name__)
router = APIRouter()
FURNACE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
FurnaceId = Path(pattern=FURNACE_ID_PATTERN, description="furnace id")
T = TypeVar("T")
WINDOWS_ROUTE = "/v1/furnaces/{furnace_id}/windows"


NO_DATA = "no_data"  # the health reported for a furnace whose data stopped


def _health(rt: Runtime, stored: dict[str, str], det: dict[str, Any]) -> dict[str, str]:
    """The last window's per-modality health, or every modality `no_data` once that window was
    committed (`updated_at`, wall clock) more than FURNACE_NO_DATA_SECONDS ago: a furnace whose
    data stopped does not read "ok" forever (issue 15 item 2; /metrics does the same)."""
    health: dict[str, str] = dict(det.get("health") or {})
    try:
        age = time.time() - float(stored["updated_at"])
    except (KeyError, ValueError):
        age = float("inf")  # no commit time: nothing says the data is recent
    if age > rt.settings.no_data_seconds:
        return dict.fromkeys(health, NO_DATA)
    return health


def _episode(furnace_id: str, stored: dict[str, str]) -> dict[str, Any] | None:
    """The open alert episode in a stored state hash (None when none is open)."""
    try:
        return parse_state(furnace_id, stored).episode_dict()
    except ValueError:
        logger.warning("unreadable alert state for %s", furnace_id)
        return None


@router.post(
    WINDOWS_ROUTE,
    response_model=DetectionOut,
    dependencies=[Depends(require_key("write"))],
    summary="Score one window of current and/or camera frames",
)
async def post_window(
    rt: RuntimeDep,
    engine: EngineDep,
    client: RedisDep,
    body: WindowIn,
    furnace_id: str = FurnaceId,
) -> dict[str, Any]:
    settings = rt.settings
    if rt.http_pending >= settings.http_queue:
        rt.metrics.window_rejected(source="http", reason="busy")
        msg = f"{rt.http_pending} windows are waiting for inference; retry shortly"
        raise HTTPException(503, msg, headers={"Retry-After": "1"})
    rt.http_pending += 1
    try:
        return await _score_window(rt, engine, client, body, furnace_id)
    finally:
        rt.http_pending -= 1


async def _score_window(
    rt: Runtime, engine: Engine, client: aioredis.Redis, body: WindowIn, furnace_id: str
) -> dict[str, Any]:
    settings = rt.settings
    try:
        window, notes = await rt.decode(  # its own pool: never the streams' inference worker
            lambda: window_from_request(
                body, furnace_id, engine.manifest.window, settings, received_at=time.time()
            )
        )
    except (RequestError, ImageError) as exc:
        # 413 is for the body size (the app's limit); a body that parsed but holds too many
        # samples or frames, or an image too large to decode, is unprocessable content.
        rt.metrics.window_rejected(source="http", reason=exc.reason)
        raise HTTPException(422, str(exc)) from exc
    detections = await rt.score([window], source="http")
    det = detections[0]
    out = det.to_dict()
    out.update(notes)
    try:
        result = await commit_detection(
            client,
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


READ_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Redis is unreachable or did not answer in time (JSON `detail`, "
        "`Retry-After`)"
    }
}


async def _read(rt: Runtime, work: Awaitable[T]) -> T:
    """Await a GET route's Redis work: 503 with a JSON `detail` and `Retry-After` when Redis is
    unreachable, fails, or takes longer than FURNACE_REDIS_READ_TIMEOUT_SECONDS (a frozen
    server), never a 500."""
    timeout = rt.settings.redis_read_timeout_seconds
    try:
        return await asyncio.wait_for(work, timeout)
    except TimeoutError as exc:  # asyncio's; redis-py's own TimeoutError is a RedisError
        msg = f"the state store (Redis) did not answer within {timeout:g} s; retry later"
        raise HTTPException(503, msg, headers={"Retry-After": "5"}) from exc
    except (RedisError, OSError) as exc:
        logger.warning("a read from Redis failed: %r", exc)
        msg = f"the state store (Redis) is unavailable ({type(exc).__name__}); retry later"
        raise HTTPException(503, msg, headers={"Retry-After": "5"}) from exc


@router.get(
    "/v1/furnaces/{furnace_id}/state",
    response_model=FurnaceState,
    dependencies=[Depends(require_key("read"))],
    responses=READ_UNAVAILABLE,
)
async def furnace_state(
    rt: RuntimeDep, client: RedisDep, furnace_id: str = FurnaceId
) -> dict[str, Any]:
    """The latest detection, the open alert episode (if any) and per-modality health."""
    stored = await _read(rt, load_state(client, Keys(rt.settings.key_prefix), furnace_id))
    if "detection" not in stored:
        raise HTTPException(404, f"no detections for furnace {furnace_id!r} yet")
    det = json.loads(stored["detection"])
    return {
        "furnace_id": furnace_id,
        "last_window_end": float(det["window_end"]),
        "detection": det,
        "episode": _episode(furnace_id, stored),
        "health": _health(rt, stored, det),
    }


@router.get(
    "/v1/furnaces",
    response_model=FurnacesOut,
    dependencies=[Depends(require_key("read"))],
    responses=READ_UNAVAILABLE,
)
async def furnaces(
    rt: RuntimeDep,
    client: RedisDep,
    limit: int = Query(100, ge=1, le=1000, description="furnaces per page"),
    cursor: str | None = Query(
        None,
        pattern=FURNACE_ID_PATTERN,
        description="`next_cursor` of the previous page: furnaces after this id",
    ),
) -> dict[str, Any]:
    """Furnaces with detections, and the ones this replica reads streams of, by id, one page
    at a time: follow `next_cursor` (null on the last page)."""
    keys = Keys(rt.settings.key_prefix)
    reading = set(rt.consumer.status.furnaces) if rt.consumer else set()

    async def page() -> tuple[list[str], list[dict[str, str]], bool]:
        known = {as_text(m) for m in await client.smembers(keys.furnaces)}
        ids = sorted(f for f in known | reading if cursor is None or f > cursor)
        chosen = ids[:limit]
        pipe = client.pipeline(transaction=False)
        for furnace_id in chosen:
            pipe.hgetall(keys.state(furnace_id))
        rows = await pipe.execute() if chosen else []
        states = [{as_text(k): as_text(v) for k, v in raw.items()} for raw in rows]
        return chosen, states, len(ids) > limit

    chosen, states, more = await _read(rt, page())
    out = []
    for furnace_id, stored in zip(chosen, states, strict=True):
        det = json.loads(stored["detection"]) if "detection" in stored else None
        out.append(
            {
                "furnace_id": furnace_id,
                "read_by_this_replica": furnace_id in reading,
                "last_window_end": det["window_end"] if det else None,
                "condition": det["condition"] if det else None,
                "score": det["score"] if det else None,
                "health": _health(rt, stored, det) if det else {},
                "episode": _episode(furnace_id, stored),
            }
        )
    return {"furnaces": out, "next_cursor": chosen[-1] if more else None}


_PATH_KEYS = frozenset({"path", "paths", "run", "run_dir", "dir", "data_dir", "test_data", "out"})


def _public(value: Any) -> Any:
    """A manifest section without file-system paths (training data, run directories): keys
    that name one are dropped, and so is every string value with a slash or backslash."""
    if isinstance(value, dict):
        return {
            k: _public(v)
            for k, v in value.items()
            if k not in _PATH_KEYS and k != "config" and not _pathlike(v)
        }
    if isinstance(value, list):
        return [_public(v) for v in value if not _pathlike(v)]
    return value


def _pathlike(value: Any) -> bool:
    return isinstance(value, str) and ("/" in value or "\\" in value or value.startswith("~"))


@router.get(
    "/v1/model",
    response_model=ModelOut,
    dependencies=[Depends(require_key("read"))],
    responses=READ_UNAVAILABLE,
)
async def model_info(rt: RuntimeDep, engine: EngineDep, client: RedisDep) -> dict[str, Any]:
    """A summary of the served bundle's manifest (no file-system paths), who signed it and
    what `model:desired` asks the fleet to serve."""
    m = engine.manifest
    raw = m.raw
    desired = await _read(rt, client.get(Keys(rt.settings.key_prefix).model_desired))
    return {
        "bundle": PurePath(rt.bundle_name).name,  # FURNACE_BUNDLE may be a path
        "signed_by": m.signed_by,
        "desired": None if desired is None else as_text(desired),
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
        "heads": m.heads,
        "thresholds": raw.get("thresholds"),
        "alert_policy": _policy_out(rt, m.alert_policy),
        "metrics": _public((raw.get("metrics") or {}).get("settings")),
        "training": _public(raw.get("training") or {}),
        "memory": None if raw.get("memory") is None else _public(raw["memory"]),
        "adaptation": raw.get("adaptation"),
    }


@router.post(
    "/v1/admin/reload",
    response_model=ReloadOut,
    dependencies=[Depends(require_key("admin"))],
    summary="Load a bundle from the models directory: verify, warm, then swap",
)
async def reload_model(rt: RuntimeDep, body: ReloadIn) -> dict[str, Any]:
    if rt.reload_lock.locked():
        raise HTTPException(status.HTTP_409_CONFLICT, "a reload is already running")
    async with rt.reload_lock:
        path = rt.settings.bundle_path(body.bundle)
        try:
            old, engine = await rt.reload(body.bundle)
        except ReloadRefusedError as exc:
            raise HTTPException(422, str(exc)) from exc
        if body.fleet:
            try:  # the other replicas follow on their next poll of model:desired
                await rt.redis().set(Keys(rt.settings.key_prefix).model_desired, body.bundle)
                rt.desired_seen = body.bundle
            except (RedisError, NotReadyError) as exc:
                msg = f"reloaded here, but model:desired could not be set: {exc!r}"
                raise HTTPException(503, msg, headers={"Retry-After": "5"}) from exc
        return {
            "previous": old,
            "model_version": engine.model_version,
            "bundle": str(path),
            "fleet": body.fleet,
        }


@router.get("/healthz", response_model=HealthOut, include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyOut,
    response_model_exclude_none=True,
    responses={503: {"model": ReadyOut, "description": "not ready: `failing` says why"}},
)
async def readyz(rt: RuntimeDep, response: Response) -> ReadyOut:
    """Ready: bundle loaded, Redis answers, shard lease held, consumer loop alive and recent,
    not draining (docs/design/serving.md 5.3). 503 lists the failing checks."""
    checks = ReadyChecks(model=rt.engine is not None, draining=rt.draining, redis=False)
    try:
        checks.redis = bool(await asyncio.wait_for(rt.redis().ping(), 2.0))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks.redis = False
        checks.redis_error = str(exc)[:200] or type(exc).__name__
    ok = checks.model and checks.redis and not rt.draining
    if rt.consumer is not None:
        st = rt.consumer.status
        fresh = time.monotonic() - st.last_loop < 3 * rt.settings.block_ms / 1000.0 + 5.0
        alive = st.running and rt.consumer_task is not None and not rt.consumer_task.done()
        checks.lease, checks.consumer, checks.streams = st.lease_held, alive and fresh, st.streams
        if st.error:
            checks.consumer_error = st.error
        ok = ok and st.lease_held and alive and fresh
    if rt.load_error:
        checks.error = rt.load_error
        ok = False
    names = ("model", "redis", "lease", "consumer")
    failing = sorted(k for k in names if getattr(checks, k) is False)
    if rt.draining:
        failing.append("draining")
    response.status_code = 200 if ok else 503
    return ReadyOut(ready=bool(ok), failing=failing, checks=checks)


@router.get("/metrics", include_in_schema=False)
async def metrics(rt: RuntimeDep) -> Response:
    body, content_type = rt.metrics.render()
    return Response(body, media_type=content_type)


def _policy_out(rt: Runtime, bundle: BundleAlertPolicy | None) -> dict[str, Any]:
    policy = rt.settings.alert_policy(bundle)
    return {
        "k": policy.k,
        "n": policy.n,
        "m": policy.m,
        "bundle": None if bundle is None else dataclasses.asdict(bundle),
    }
