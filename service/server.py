"""The HTTP server around the app: uvicorn with deadlines and a connection cap, and a limit on
requests in progress (issue 14 item 4: 300 idle connections without a key turned every route,
/readyz included, into 503).

uvicorn has no timeout on receiving a request (Kludex/uvicorn #157, still open): its keep-alive
timer runs only between requests and is reset by every byte, and `limit_concurrency` counts
idle connections, so a few hundred sockets that never send a request head make it answer 503
to everyone. Here:

- `DeadlineProtocol` (a subclass of uvicorn's httptools or h11 protocol) closes a connection
  that has not sent a complete request head within `FURNACE_HTTP_HEADER_TIMEOUT_SECONDS` of
  connecting (or of its previous response), and one whose body is not complete within
  `FURNACE_HTTP_BODY_TIMEOUT_SECONDS` of its head. These are deadlines, not idle timers, so
  trickling one byte at a time does not extend them.
- Over `FURNACE_HTTP_MAX_CONNECTIONS` open connections, a new one evicts the connection that
  has waited longest for a request head (idle sockets lose; a client sending requests does
  not); when none is waiting, the new connection is closed.
- `RequestLimit` answers 503 (`Retry-After: 1`) beyond `FURNACE_HTTP_CONCURRENCY` requests in
  progress, counting requests, never idle connections; probes (`/healthz`, `/readyz`,
  `/metrics`) are not counted or limited.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from service.settings import Settings

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
MAX_HEADER_BYTES = 64 * 1024  # h11: largest incomplete request head kept in memory


class RequestLimit:
    """ASGI middleware: at most `limit` requests in progress (probes exempt), else 503."""

    def __init__(self, app: ASGIApp, *, limit: int, exempt: frozenset[str] = PROBES) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            detail = f"{self.active} requests in progress (FURNACE_HTTP_CONCURRENCY); retry shortly"
            body = json.dumps({"detail": detail}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def _base_protocol() -> type[Any]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # uvicorn without the [standard] extra
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    return HttpToolsProtocol


def deadline_protocol(
    *, header_seconds: float, body_seconds: float, max_connections: int
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with the request deadlines and the connection cap."""
    base = _base_protocol()

    class DeadlineProtocol(base):  # type: ignore[misc, valid-type]
        _timer: asyncio.TimerHandle | None = None
        _waiting_since: float | None = None  # set while waiting for a request head
        _seen_cycle: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._arm(header_seconds, waiting=True)
            self._cap()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow_cycle()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.cycle is not None and self.cycle is not self._seen_cycle:
                self._follow_cycle()  # a pipelined request was parsed already
            else:
                self._arm(header_seconds, waiting=True)

        def _follow_cycle(self) -> None:
            cycle: Any = self.cycle
            if cycle is None:
                return
            if cycle is not self._seen_cycle:  # a new request head arrived
                self._seen_cycle = cycle
                if cycle.more_body:
                    self._arm(body_seconds, waiting=False)
                else:
                    self._disarm()
            elif self._timer is not None and self._waiting_since is None and not cycle.more_body:
                self._disarm()  # the body is complete

        def _arm(self, seconds: float, *, waiting: bool) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expire)
            self._waiting_since = self.loop.time() if waiting else None

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            self._waiting_since = None

        def _expire(self) -> None:
            what = "request head" if self._waiting_since is not None else "request body"
            self._timer = None
            self._waiting_since = None
            if not self.transport.is_closing():
                logger.debug("closing a connection: no complete %s in time", what)
                self.transport.close()

        def _cap(self) -> None:
            if len(self.connections) <= max_connections:
                return
            waiting = [
                c
                for c in self.connections
                if c is not self and getattr(c, "_waiting_since", None) is not None
            ]
            victim = min(waiting, key=lambda c: c._waiting_since) if waiting else self
            logger.warning(
                "%d connections (FURNACE_HTTP_MAX_CONNECTIONS %d): closing %s",
                len(self.connections),
                max_connections,
                "the longest idle one" if waiting else "the new one",
            )
            victim._disarm()
            victim.transport.close()

    return DeadlineProtocol


def server_config(app: Any, settings: Settings, *, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration `furnace serve` runs (and the tests run, on a free port)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=deadline_protocol(
            header_seconds=settings.http_header_timeout_seconds,
            body_seconds=settings.http_body_timeout_seconds,
            max_connections=settings.http_max_connections,
        ),
        timeout_keep_alive=settings.http_keep_alive_seconds,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        limit_concurrency=None,  # it counts idle connections too: RequestLimit counts requests
        log_level=log_level,
        lifespan="on",
    )
