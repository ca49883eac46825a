"""API keys on write and admin routes, and on read routes when FURNACE_REQUIRE_READ_KEY or
FURNACE_READ_KEYS asks for them (docs/design/serving.md 5.1, docs/configuration.md).

`X-API-Key` header; keys compared in constant time on bytes (header values are latin-1, and
`compare_digest` on a non-ASCII str raises TypeError). Missing key -> 401, wrong key -> 403,
both with `WWW-Authenticate`. Keys are never logged.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

HEADER = "X-API-Key"
_scheme = APIKeyHeader(name=HEADER, auto_error=False)
_CHALLENGE = {"WWW-Authenticate": HEADER}


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    """True when `given` equals one of `keys`; every key is compared (constant time)."""
    raw = given.encode("latin-1", errors="replace")
    found = False
    for key in keys:
        found |= secrets.compare_digest(raw, key.encode("utf-8"))
    return found


def require_key(kind: str) -> Callable[..., Coroutine[Any, Any, None]]:
    """A dependency for routes needing a `read`, `write` or `admin` key (`read`: only when
    the settings ask for read keys; read, write and admin keys are all accepted there)."""

    async def check(request: Request, key: str | None = Security(_scheme)) -> None:
        settings = request.app.state.settings
        if settings.auth_disabled:
            return
        if kind == "read":
            read = settings.read_key_set()
            if read is None:
                return
            keys = read
        else:
            keys = settings.admin_key_set() if kind == "admin" else settings.write_keys()
        if not key:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, f"missing {HEADER} header", headers=_CHALLENGE
            )
        if not key_matches(key, keys):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this {HEADER} is not valid for {kind} routes"
            )

    return check
