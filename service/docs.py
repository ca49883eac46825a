"""The OpenAPI page without internet: Swagger UI served from the files in `service/static/`
(FastAPI's default page loads them from a CDN, and a plant network has none), plus the tags,
summaries and request examples of every documented route, kept here in one place (FastAPI
"How To - Recipes: Custom Docs UI Static Assets").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

SWAGGER_DIR: Final = Path(__file__).resolve().parent / "static" / "swagger-ui"
STATIC_URL: Final = "/static/swagger-ui"

TAGS: Final = [
    {"name": "windows", "description": "Score a window posted over HTTP (the stream path's twin)."},
    {"name": "furnaces", "description": "Latest detection, open alert episode and sensor health."},
    {"name": "model", "description": "The served bundle and its reload (admin key)."},
    {"name": "operations", "description": "Readiness for load balancers and orchestrators."},
]

# (method, path) -> tag and summary; a route's own summary wins.
ROUTES: Final[dict[tuple[str, str], tuple[str, str]]] = {
    ("POST", "/v1/furnaces/{furnace_id}/windows"): (
        "windows",
        "Score one window of current and/or camera frames",
    ),
    ("GET", "/v1/furnaces/{furnace_id}/state"): (
        "furnaces",
        "A furnace's latest detection, open episode and health",
    ),
    ("GET", "/v1/furnaces"): ("furnaces", "Every known furnace with its latest detection"),
    ("GET", "/v1/model"): ("model", "The served bundle: version, thresholds, alert policy"),
    ("POST", "/v1/admin/reload"): ("model", "Load another bundle: verify, warm, then swap"),
    ("GET", "/readyz"): ("operations", "Readiness: model, Redis, shard lease, consumer"),
}


def _window_example(*, baseline: bool) -> dict[str, Any]:
    """A current-only window of 32 samples (16 s at 2 Hz) ending at 1700000030.5."""
    samples = [
        [12000.0 + 7 * (k % 5), 11990.0 + 5 * (k % 3), 12005.0 - 3 * (k % 4)] for k in range(32)
    ]
    current: dict[str, Any] = {"start": 1_700_000_015.0, "rate_hz": 2.0, "samples": samples}
    if baseline:
        current["baseline_a"] = [12010.0, 11995.0, 12000.0]
    return {"current": current, "window_end": 1_700_000_030.5}


EXAMPLES: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("POST", "/v1/furnaces/{furnace_id}/windows"): {
        "current_with_baseline": {
            "summary": "Current only, with the per-phase baseline",
            "description": "32 samples at 2 Hz; the camera is absent, so current decides alone.",
            "value": _window_example(baseline=True),
        },
        "current_window_median": {
            "summary": "Current only, no baseline (the window's own median is used)",
            "value": _window_example(baseline=False),
        },
    },
    ("POST", "/v1/admin/reload"): {
        "this_replica": {"summary": "Reload this replica", "value": {"bundle": "default"}},
        "fleet": {
            "summary": "Reload every replica (sets model:desired)",
            "value": {"bundle": "default", "fleet": True},
        },
    },
}


def document_routes(app: FastAPI) -> None:
    """Give every documented route its tag, a summary and request examples (`ROUTES`,
    `EXAMPLES`); call it after the routers are included."""
    app.openapi_tags = TAGS
    for route in _api_routes(app.routes):
        for method in route.methods or ():
            key = (method, route.path)
            if key in ROUTES:
                tag, summary = ROUTES[key]
                route.tags = list(dict.fromkeys([*route.tags, tag]))
                route.summary = route.summary or summary
            if key in EXAMPLES:
                content = {"application/json": {"examples": EXAMPLES[key]}}
                route.openapi_extra = {
                    **(route.openapi_extra or {}),
                    "requestBody": {"content": content},
                }


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every `APIRoute`, including those of included routers (FastAPI keeps an included
    router as one entry holding the `original_router`)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(list(inner.routes))


def serve_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) from local files; the app must be built with `docs_url=None`."""
    app.mount(STATIC_URL, StaticFiles(directory=SWAGGER_DIR), name="swagger-ui")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon-32x32.png",
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(redirect_url, oauth2_redirect, methods=["GET"], include_in_schema=False)
