"""Control of the inference server next to the agent, through the V2 model-repository API.

`InferenceServer` is the interface the agent depends on (so Triton can be added later);
`MLServerClient` implements it over MLServer's REST endpoints with aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from contract.logs import log_fields

log = logging.getLogger(__name__)

READY = "READY"
LOADING = "LOADING"


class InferenceServerError(Exception):
    """The inference server refused or failed a request."""


class InferenceServerUnavailable(InferenceServerError):
    """The inference server could not be reached (refused, reset, timed out)."""


@dataclass(frozen=True)
class IndexEntry:
    """One entry of the inference server's repository index: a model's name, its state there
    (`READY`, `LOADING`, `UNAVAILABLE`, ...) and its version (`parameters.version` of its
    `model-settings.json`, as the agent wrote it)."""

    name: str
    state: str
    version: str = ""
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.state == READY


def normalise_state(state: object) -> str:
    """`State.READY` (as MLServer's gRPC index writes it) and `ready` both become `READY`."""
    text = str(state or "").strip()
    if text.startswith("State."):
        text = text[len("State.") :]
    return text.upper()


class InferenceServer(Protocol):
    async def ready(self) -> bool:
        """True when the server answers its readiness check."""
        ...

    async def index(self) -> list[IndexEntry]:
        """Every model the server knows of, with its state."""
        ...

    async def load(self, name: str) -> None:
        """Load (or reload) `name` from the model repository; raise InferenceServerError."""
        ...

    async def unload(self, name: str) -> None:
        """Unload `name`; an unknown model counts as unloaded."""
        ...

    async def resident_bytes(self) -> int | None:
        """The host memory the server's processes hold now; None when it cannot be read."""
        ...

    async def close(self) -> None: ...


# How long an idle connection to the inference server is kept for the next request: under
# uvicorn's default keep-alive of 5 s, so the server never closes one the agent reuses.
KEEPALIVE_S = 2.0
# The most of MLServer's /metrics page read (it grows with the models it serves).
METRICS_LIMIT_BYTES = 8 * 2**20
RESIDENT_MEMORY = "process_resident_memory_bytes"


class MLServerClient:
    """MLServer's REST API: /v2/health/ready, /v2/repository/index, .../load, .../unload; and
    its Prometheus page (`metrics_url`, "" for none) for the memory its process holds."""

    def __init__(
        self,
        base_url: str,
        *,
        load_timeout_s: float,
        request_timeout_s: float,
        metrics_url: str = "",
    ) -> None:
        self._base = base_url.rstrip("/")
        self._metrics_url = metrics_url
        # Said once: why host memory is not measured.
        self._memory_unreadable = False
        self._load_timeout = aiohttp.ClientTimeout(total=load_timeout_s)
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return self._base

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # A pooled connection is dropped before MLServer's uvicorn closes it (5 s idle):
            # one closed just as a load is sent on it fails the load ("Server disconnected"),
            # and a load is never sent twice.
            connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _send(self, url: str, limit: aiohttp.ClientTimeout, body: Any) -> tuple[int, str]:
        async with self._client().post(url, json=body, timeout=limit) as response:
            return response.status, await response.text()

    async def _post(
        self, path: str, limit: aiohttp.ClientTimeout, body: Any = None, *, resend: bool = False
    ) -> tuple[int, str]:
        """POST `path`. `resend`: on a connection the server closed, send it once more.

        Only for requests that are safe to repeat (index, unload): the disconnect usually
        means a pooled connection MLServer had closed (it does after a 500), but it can also
        mean MLServer crashed after receiving the request, so a load is never sent twice.
        """
        url = f"{self._base}{path}"
        try:
            try:
                return await self._send(url, limit, body)
            except aiohttp.ServerDisconnectedError:
                if not resend:
                    raise
                return await self._send(url, limit, body)
        except TimeoutError as exc:
            raise InferenceServerUnavailable(
                f"POST {path}: no answer within {limit.total:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise InferenceServerUnavailable(f"POST {path}: {exc}") from exc

    async def ready(self) -> bool:
        try:
            async with self._client().get(
                f"{self._base}/v2/health/ready", timeout=self._request_timeout
            ) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def index(self) -> list[IndexEntry]:
        status, text = await self._post(
            "/v2/repository/index", self._request_timeout, body={}, resend=True
        )
        if status != 200:
            raise InferenceServerError(f"repository index: HTTP {status}: {error_text(text)}")
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise InferenceServerError(f"repository index: not JSON: {text[:200]!r}") from exc
        if not isinstance(items, list):
            raise InferenceServerError(f"repository index: expected a list, got {text[:200]!r}")
        return [
            IndexEntry(
                name=str(item.get("name", "")),
                state=normalise_state(item.get("state")),
                version=str(item.get("version") or ""),
                reason=str(item.get("reason") or ""),
            )
            for item in items
            if isinstance(item, dict) and item.get("name")
        ]

    async def load(self, name: str) -> None:
        status, text = await self._post(f"/v2/repository/models/{name}/load", self._load_timeout)
        if status != 200:
            raise InferenceServerError(f"load {name}: HTTP {status}: {error_text(text)}")

    async def unload(self, name: str) -> None:
        status, text = await self._post(
            f"/v2/repository/models/{name}/unload", self._request_timeout, resend=True
        )
        if status == 404:
            log.debug(
                "model %s: not held by the inference server (404): counted as unloaded",
                name,
                extra=log_fields(model=name),
            )
            return
        if status != 200:
            raise InferenceServerError(f"unload {name}: HTTP {status}: {error_text(text)}")

    async def resident_bytes(self) -> int | None:
        """MLServer's `process_resident_memory_bytes` (prometheus_client's process collector,
        summed when it lists several). None, said once, when the page cannot be read or has no
        such series: MLServer with parallel workers exports no process metrics."""
        if not self._metrics_url:
            return None
        why, text = "", ""
        try:
            async with self._client().get(
                self._metrics_url, timeout=self._request_timeout
            ) as response:
                body = bytearray()
                while len(body) <= METRICS_LIMIT_BYTES:
                    chunk = await response.content.read(METRICS_LIMIT_BYTES + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
                if response.status != 200:
                    why = f"HTTP {response.status}"
                elif len(body) > METRICS_LIMIT_BYTES:
                    why = f"the page is larger than {METRICS_LIMIT_BYTES // 2**20} MiB"
                text = body.decode(errors="replace")
        except (TimeoutError, aiohttp.ClientError) as exc:
            why = str(exc) or type(exc).__name__
        if not why:
            try:
                found = [
                    sample.value
                    for family in text_string_to_metric_families(text)
                    if family.name == RESIDENT_MEMORY
                    for sample in family.samples
                ]
            except ValueError as exc:
                found, why = [], f"not Prometheus text ({exc})"
            total = sum(found)
            if found and all(value >= 0 for value in found) and 0 <= total < 2**63:
                self._memory_unreadable = False
                return int(total)
            why = why or (
                f"{RESIDENT_MEMORY} is not a size: {found}"
                if found
                else f"no {RESIDENT_MEMORY} series (MLServer with parallel workers "
                "exports none: MLSERVER_PARALLEL_WORKERS=0 makes it measurable)"
            )
        if not self._memory_unreadable:
            self._memory_unreadable = True
            log.warning(
                "the inference server's host memory is not measured (%s: %s); models that "
                "declare no memory are placed without a learned figure",
                self._metrics_url,
                why,
            )
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def error_text(text: str) -> str:
    """What an MLServer error says, in at most 500 characters: its {"error": "..."} or
    the body; of a Python traceback, its last line (the exception), not its first frames."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    message = str(body["error"]) if isinstance(body, dict) and "error" in body else text
    message = message.strip()
    if "Traceback (most recent call last)" in message:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        message = lines[-1]
    return message[:500]


async def wait_until_ready(
    server: InferenceServer, where: str, stop: asyncio.Event, interval_s: float = 0.5
) -> bool:
    """Poll readiness until the server answers (True) or `stop` is set (False).

    Says every 30 s that it is still waiting, so a missing MLServer is visible in the log.
    """
    loop = asyncio.get_running_loop()
    started = last_said = loop.time()
    while not stop.is_set():
        if await server.ready():
            return True
        if loop.time() - last_said >= 30:
            last_said = loop.time()
            log.info(
                "waiting for the inference server at %s (%.0fs so far)",
                where,
                loop.time() - started,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
    return False


_PROBE_IMPLEMENTATION = "mlserver.model.MLModel"


async def serves_folder(server: InferenceServer, root: Path) -> bool | None:
    """Whether `server` serves the model repository folder `root`.

    Writes a probe model's settings file under `root`, asks the repository index (which
    lists every model-settings.json of the folder the server serves), and removes the probe.
    None when it cannot tell (the folder is not writable, or the index failed).
    """
    probe = f"gpuplace-probe-{uuid.uuid4().hex[:12]}"
    folder = root / probe
    settings = json.dumps({"name": probe, "implementation": _PROBE_IMPLEMENTATION})
    try:
        await asyncio.to_thread(_write_probe, folder, settings)
    except OSError as exc:
        log.warning("cannot write a probe model to %s to check it: %s", root, exc)
        return None
    try:
        entries = await server.index()
    except InferenceServerError as exc:
        log.warning("reading the inference server's index to check its folder failed: %s", exc)
        return None
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    return any(entry.name == probe for entry in entries)


def _write_probe(folder: Path, settings: str) -> None:
    folder.mkdir(parents=True)
    (folder / "model-settings.json").write_text(settings, encoding="utf-8")
