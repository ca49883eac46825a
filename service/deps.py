"""FastAPI dependencies: what a route needs from the app's `Runtime`, or HTTP 503 with a JSON
`detail` saying what is not ready (`Retry-After` set) instead of a 500.

Use them as annotations: `rt: RuntimeDep`, `engine: EngineDep`, `client: RedisDep`.
"""

from __future__ import annotations

from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status

from service.engine import Engine
from service.runtime import NotReadyError, Runtime

RETRY_AFTER = {"Retry-After": "5"}


def not_ready(detail: str) -> HTTPException:
    """503 Service Unavailable with `detail` and `Retry-After`."""
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers=RETRY_AFTER)


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        msg = "the service runtime is not set up (create_app builds it)"
        raise not_ready(msg)
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_engine(rt: RuntimeDep) -> Engine:
    """The engine serving now (held for the whole request, across a reload)."""
    try:
        return rt.current_engine()
    except NotReadyError as exc:
        raise not_ready(str(exc)) from exc


def get_redis(rt: RuntimeDep) -> aioredis.Redis:
    try:
        return rt.redis()
    except NotReadyError as exc:
        raise not_ready(str(exc)) from exc


EngineDep = Annotated[Engine, Depends(get_engine)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
