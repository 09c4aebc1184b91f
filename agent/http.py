"""The agent's HTTP endpoints: /ready and /live on the readiness port, /metrics on the
metrics port (one server when both ports are the same)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from contract.http_logs import quiet_malformed_requests

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]


def health_routes(app: web.Application, ready: ReadyCheck) -> None:
    async def ready_handler(request: web.Request) -> web.Response:
        ok, reason = await ready()
        return web.Response(status=200 if ok else 503, text=(reason or "ready") + "\n")

    async def live_handler(request: web.Request) -> web.Response:
        return web.Response(text="live\n")

    app.router.add_get("/ready", ready_handler)
    app.router.add_get("/live", live_handler)


def metrics_routes(app: web.Application, registry: CollectorRegistry) -> None:
    async def metrics_handler(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/metrics", metrics_handler)


class HttpEndpoints:
    """Starts the endpoints; `readiness_port` and `metrics_port` tell where they landed."""

    def __init__(
        self,
        host: str,
        readiness_port: int,
        metrics_port: int,
        ready: ReadyCheck,
        registry: CollectorRegistry,
    ) -> None:
        self._host = host
        self._ports = (readiness_port, metrics_port)
        self._ready = ready
        self._registry = registry
        self._runners: list[web.AppRunner] = []
        self.readiness_port = readiness_port
        self.metrics_port = metrics_port

    async def start(self) -> None:
        readiness, metrics = self._ports
        health = web.Application()
        health_routes(health, self._ready)
        if readiness == metrics and readiness != 0:
            metrics_routes(health, self._registry)
            self.readiness_port = self.metrics_port = await self._serve(health, readiness)
        else:
            self.readiness_port = await self._serve(health, readiness)
            scrape = web.Application()
            metrics_routes(scrape, self._registry)
            self.metrics_port = await self._serve(scrape, metrics)
        log.info(
            "HTTP: /ready and /live on %s:%d, /metrics on %s:%d",
            self._host,
            self.readiness_port,
            self._host,
            self.metrics_port,
        )

    async def _serve(self, app: web.Application, port: int) -> int:
        quiet_malformed_requests()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self._host, port)
        await site.start()
        addresses = runner.addresses
        return int(addresses[-1][1]) if addresses else port

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
