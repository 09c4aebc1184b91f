"""HTTP: /live, /ready and /metrics."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from contract.http_logs import quiet_malformed_requests


def build_app(registry: CollectorRegistry, ready: Callable[[], bool]) -> web.Application:
    quiet_malformed_requests()

    async def live(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readiness(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/live", live)
    app.router.add_get("/ready", readiness)
    app.router.add_get("/metrics", metrics)
    return app
