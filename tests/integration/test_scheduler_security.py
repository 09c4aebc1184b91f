"""Who may talk to the scheduler, and what it shows: credentials in a storageUri reach only
the agent that loads it; the state file is its owner's alone."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract.grpc_tls import channel_credentials
from contract.tls import ClientTls
from devharness.sim_agent import SimAgent
from gpuplace.cli import main
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from scheduler_service.store import Store
from tests.support.scheduler import SchedulerHandle, running_scheduler
from tests.support.tls import Authority
from tests.support.wait import wait_until

Stub = scheduler_pb2_grpc.SchedulerStub
SIGNED = "https://reader:s3cret@models.example.com/iris/model.joblib?X-Amz-Signature=abc123"


async def test_a_storage_uri_is_shown_without_its_credentials(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    agent: SimAgent = await agents("a")
    await client.LoadModel(
        scheduler_pb2.LoadModelRequest(model=common_pb2.ModelSpec(name="iris", storage_uri=SIGNED))
    )
    await wait_until(lambda: agent.loads, what="the load")
    assert agent.loads[0].storage_uri == SIGNED  # the agent that loads it gets it whole
    status = await client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name="iris"))
    listed = await client.ListModels(scheduler_pb2.ListModelsRequest())
    for shown in (status.spec.storage_uri, listed.models[0].spec.storage_uri):
        assert shown == "https://models.example.com/iris/model.joblib"
    async for update in client.WatchModels(scheduler_pb2.WatchModelsRequest(name="iris")):
        assert "s3cret" not in str(update) and "abc123" not in str(update)
        break


async def test_the_state_file_is_its_owners_alone(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    Store(fresh).close()
    wide = tmp_path / "wide.db"
    wide.touch(mode=0o644)
    wide.chmod(0o644)
    Store(wide).close()
    for path in (fresh, wide):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@dataclass
class Secured:
    scheduler: SchedulerHandle
    trusted: Authority
    untrusted: Authority
    token_file: Path


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    """A scheduler with mutual TLS on both ports (its own CA) and a client bearer token."""
    trusted, untrusted = Authority(tmp_path, "trusted"), Authority(tmp_path, "untrusted")
    server = trusted.server()
    token_file = tmp_path / "token"
    token_file.write_text("a-token-of-thirty-two-characters\n")
    async with running_scheduler(
        tmp_path,
        tls_cert=server.cert,
        tls_key=server.key,
        tls_client_ca=trusted.ca,
        client_token_file=token_file,
    ) as scheduler:
        yield Secured(scheduler, trusted, untrusted, token_file)


def agent_tls(authority: Authority, ca: Path, label: str) -> ClientTls:
    pair = authority.client(label)
    return ClientTls(ca, pair.cert, pair.key)


async def test_only_an_agent_with_a_trusted_certificate_gets_in(secured: Secured) -> None:
    ca, address = secured.trusted.ca, secured.scheduler.agent_address
    good = await SimAgent(address, "good", tls=agent_tls(secured.trusted, ca, "good")).connect()
    forged = await SimAgent(
        address, "forged", tls=agent_tls(secured.untrusted, ca, "forged")
    ).connect()
    bare = await SimAgent(address, "bare", tls=ClientTls(ca)).connect()
    plain = await SimAgent(address, "plain").connect()
    try:
        await wait_until(lambda: good.welcomed, what="the trusted agent welcomed")
        for refused in (forged, bare, plain):
            await wait_until(lambda r=refused: r.closed_with is not None, what=refused.name)
            assert refused.closed_with == grpc.StatusCode.UNAVAILABLE and not refused.welcomed
        assert [s.hello.server for s in secured.scheduler.service.agents()] == ["good"]
    finally:
        for agent in (good, forged, bare, plain):
            await agent.disconnect()


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_only_a_trusted_cli_with_the_token_gets_in(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    address, ca = secured.scheduler.client_address, str(secured.trusted.ca)
    mine, theirs = secured.trusted.client("cli"), secured.untrusted.client("cli")
    token = str(secured.token_file)
    ok = ("--tls-ca", ca, "--tls-cert", str(mine.cert), "--tls-key", str(mine.key))
    assert await cli("server", "status", "--scheduler", address, *ok, "--token-file", token) == 0
    capsys.readouterr()
    forged = ("--tls-ca", ca, "--tls-cert", str(theirs.cert), "--tls-key", str(theirs.key))
    assert (
        await cli("server", "status", "--scheduler", address, *forged, "--token-file", token) == 3
    )
    assert "cannot reach the scheduler" in capsys.readouterr().err
    assert await cli("server", "status", "--scheduler", address, "--token-file", token) == 3
    capsys.readouterr()
    assert await cli("server", "status", "--scheduler", address, *ok) == 3
    assert "needs a bearer token" in capsys.readouterr().err
    wrong = secured.token_file.with_name("wrong")
    wrong.write_text("a-wrong-token-of-thirty-two-chars")
    assert (
        await cli("server", "status", "--scheduler", address, *ok, "--token-file", str(wrong)) == 3
    )
    registry = secured.scheduler.running.registry
    assert (
        registry.get_sample_value("gpuplace_scheduler_auth_refusals_total", {"api": "client"}) == 2
    )


async def test_health_needs_no_token(secured: Secured) -> None:
    pair = secured.trusted.client("probe")
    tls = ClientTls(secured.trusted.ca, pair.cert, pair.key)
    async with grpc.aio.secure_channel(
        secured.scheduler.client_address, channel_credentials(tls)
    ) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{secured.scheduler.http_url}/ready") as response:
            assert response.status == 200


async def test_an_agents_message_is_shown_without_the_storage_credentials(
    client: Stub, agents: Callable[..., Any]
) -> None:
    """Even when an agent's own message quotes the storageUri whole (the real agent redacts
    first), statuses show it without its credentials."""
    await agents("a", fail={"iris": f"fetch {SIGNED} failed: 403 Forbidden"})
    await client.LoadModel(
        scheduler_pb2.LoadModelRequest(model=common_pb2.ModelSpec(name="iris", storage_uri=SIGNED))
    )

    async def failed() -> scheduler_pb2.ModelStatus | None:
        status = await client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name="iris"))
        return status if any(r.reason for r in status.replicas) else None

    status = await wait_until(failed, what="the failed load's reason")
    assert "s3cret" not in str(status) and "abc123" not in str(status)
    assert "https://models.example.com/iris/model.joblib failed: 403" in str(status)


async def test_with_an_agent_ca_a_cli_certificate_cannot_say_hello_as_an_agent(
    tmp_path: Path,
) -> None:
    users, fleet = Authority(tmp_path, "users"), Authority(tmp_path, "agents")
    server = fleet.server()
    async with running_scheduler(
        tmp_path,
        tls_cert=server.cert,
        tls_key=server.key,
        tls_client_ca=users.ca,
        tls_agent_ca=fleet.ca,
    ) as scheduler:
        # Both trust the scheduler's certificate (the agents' CA signed it).
        user, agent = users.client("cli"), fleet.client("agent")
        as_user = ClientTls(fleet.ca, user.cert, user.key)
        as_agent = ClientTls(fleet.ca, agent.cert, agent.key)
        impostor = await SimAgent(scheduler.agent_address, "gpu-a", tls=as_user).connect()
        real = await SimAgent(scheduler.agent_address, "gpu-b", tls=as_agent).connect()
        try:
            await wait_until(lambda: real.welcomed, what="the agent welcomed")
            await wait_until(lambda: impostor.closed_with is not None, what="the impostor")
            assert impostor.closed_with == grpc.StatusCode.UNAVAILABLE
            assert not impostor.welcomed
        finally:
            await impostor.disconnect()
            await real.disconnect()
        async with grpc.aio.secure_channel(
            scheduler.client_address, channel_credentials(as_agent)
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await scheduler_pb2_grpc.SchedulerStub(channel).ListModels(
                    scheduler_pb2.ListModelsRequest(), timeout=5
                )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
