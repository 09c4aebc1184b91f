"""A fake V2 inference server (MLServer's model-repository REST API) for agent tests.

It behaves like MLServer where the agent can tell: the index lists every
`**/model-settings.json` under the repository folder (hidden folders skipped, as `glob`
does), with its `parameters.version` and READY/UNAVAILABLE; load finds the model by the
`name` in its settings (404 when none); unloading an unknown model answers 404.

A test can make a load fail (`fail[name] = "message"`), last long (`delay_s[name]`), wait
for the test (`hold[name] = asyncio.Event()`), or run a hook while loading (`on_load`, e.g.
to take GPU memory in the fake NVML). `calls` records every request in order. `/metrics`
reports the resident memory a test sets (`resident`), which loads grow by `takes[name]`.
"""

from __future__ import annotations

import asyncio
import glob
import inspect
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

Hook = Callable[[str], Awaitable[None] | None]


class FakeV2Server:
    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.loaded: dict[str, str] = {}
        self.fail: dict[str, str] = {}
        self.delay_s: dict[str, float] = {}
        self.hold: dict[str, asyncio.Event] = {}
        self.on_load: Hook | None = None
        self.on_unload: Hook | None = None
        self.ready = True
        self.calls: list[tuple[str, str]] = []
        self.loads_started = 0
        # What /metrics reports as process_resident_memory_bytes (None: no such series, as
        # MLServer with parallel workers), and what a load of each model adds to it.
        self.resident: float | None = None
        self.takes: dict[str, int] = {}
        # Bytes of other series before it (a busy server's page is large).
        self.metrics_padding = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> list[dict[str, Any]]:
        pattern = os.path.join(os.path.abspath(self.repository), "**", "model-settings.json")
        found = []
        for path in sorted(glob.glob(pattern, recursive=True)):
            try:
                body = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(body, dict):
                if not body.get("name"):
                    body["name"] = Path(path).parent.name
                found.append(body)
        return found

    def _version(self, name: str) -> str:
        for body in self.settings():
            if body["name"] == name:
                return str((body.get("parameters") or {}).get("version") or "")
        return ""

    async def _run_hook(self, hook: Hook | None, name: str) -> None:
        if hook is None:
            return
        result = hook(name)
        if inspect.isawaitable(result):
            await result

    async def _index(self, request: web.Request) -> web.Response:
        self.calls.append(("index", ""))
        await request.read()
        items = []
        for body in self.settings():
            name = body["name"]
            items.append(
                {
                    "name": name,
                    "version": str((body.get("parameters") or {}).get("version") or ""),
                    "state": "READY" if name in self.loaded else "UNAVAILABLE",
                    "reason": "",
                }
            )
        return web.json_response(items)

    async def _load(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls.append(("load", name))
        self.loads_started += 1
        if name in self.hold:
            await self.hold[name].wait()
        if self.delay_s.get(name):
            await asyncio.sleep(self.delay_s[name])
        if not any(body["name"] == name for body in self.settings()):
            return web.json_response({"error": f"Model {name} not found"}, status=404)
        if name in self.fail:
            return web.json_response({"error": self.fail[name]}, status=400)
        await self._run_hook(self.on_load, name)
        if self.resident is not None and name not in self.loaded:
            self.resident += self.takes.get(name, 0)
        self.loaded[name] = self._version(name)
        return web.json_response({})

    async def _unload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls.append(("unload", name))
        if name not in self.loaded:
            return web.json_response({"error": f"Model {name} not found"}, status=404)
        del self.loaded[name]
        if self.resident is not None:
            self.resident -= self.takes.get(name, 0)
        await self._run_hook(self.on_unload, name)
        return web.json_response({})

    async def _ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        lines = ["# TYPE model_infer_request_success counter", "model_infer_request_success 0"]
        lines += [f"# padding {'x' * 90}"] * (self.metrics_padding // 100)
        if self.resident is not None:
            lines += [
                "# TYPE process_resident_memory_bytes gauge",
                f"process_resident_memory_bytes {self.resident:.6e}",
            ]
        return web.Response(text="\n".join(lines) + "\n")

    async def start(self) -> FakeV2Server:
        app = web.Application()
        app.router.add_post("/v2/repository/index", self._index)
        app.router.add_post("/v2/repository/models/{name}/load", self._load)
        app.router.add_post("/v2/repository/models/{name}/unload", self._unload)
        app.router.add_get("/v2/health/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        for event in self.hold.values():
            event.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def load_count(self, name: str) -> int:
        return sum(1 for call in self.calls if call == ("load", name))
