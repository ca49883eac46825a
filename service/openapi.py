"""The error responses of /openapi.json (issue 14 item 8: schemathesis found 400/401/403/404/
409/413 answers that were not documented and 422 bodies whose string `detail` broke the
documented array).

Every error body is `{"detail": ...}`: a string for the service's own refusals, an array of
`{type, loc, msg}` for request validation (service/main.py `_validation_error`). After FastAPI
builds the document, `document_errors` adds to each operation the statuses it can answer,
derived from what the operation has: a key (401, 403), a body (400, 413, 422), path or query
parameters (422), and for every route but the probes 503 (not ready, Redis down, too many
requests in progress); `EXTRA` names the rest (404 of an unknown furnace, 409 of a reload
already running).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.server import PROBES

ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorOut",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "loc", "msg"],
                        "properties": {
                            "type": {"type": "string"},
                            "loc": {"type": "array", "items": {"type": "string"}},
                            "msg": {"type": "string"},
                        },
                    },
                },
            ],
            "description": "what is wrong: a message, or one entry per invalid field",
        }
    },
}
DESCRIPTIONS = {
    400: "malformed request (e.g. a body that is not JSON)",
    401: "no X-API-Key header",
    403: "the X-API-Key is not valid for this route",
    404: "not found",
    409: "conflict: another reload is running",
    413: "request body over FURNACE_MAX_BODY_BYTES",
    422: "invalid request: `detail` says what to fix",
    503: "not ready, Redis unavailable, or too busy; see `Retry-After`",
}
EXTRA: dict[tuple[str, str], tuple[int, ...]] = {
    ("get", "/v1/furnaces/{furnace_id}/state"): (404,),
    ("post", "/v1/admin/reload"): (409,),
}


def _statuses(method: str, path: str, op: dict[str, Any]) -> set[int]:
    codes: set[int] = set(EXTRA.get((method, path), ()))
    if path not in PROBES:
        codes.add(503)
    if op.get("security"):
        codes |= {401, 403}
    if "requestBody" in op:
        codes |= {400, 413, 422}
    if op.get("parameters"):
        codes.add(422)
    return codes


def document_errors(app: FastAPI) -> None:
    """Make `app.openapi()` list every error status each operation can answer."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,  # service/docs.py
        )
        doc.setdefault("components", {}).setdefault("schemas", {})["ErrorOut"] = ERROR_SCHEMA
        ref = {"$ref": "#/components/schemas/ErrorOut"}
        for path, item in doc.get("paths", {}).items():
            for method, op in item.items():
                responses = op.setdefault("responses", {})
                for code in sorted(_statuses(method, path, op)):
                    entry = responses.setdefault(str(code), {"description": DESCRIPTIONS[code]})
                    if code == 503 and "content" in entry:
                        continue  # /readyz documents its own 503 body
                    entry["content"] = {"application/json": {"schema": ref}}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
