"""No single value stops placement: numbers out of range are refused at the API edges (the
client API, an agent's hello and events), and the reconcile loop outlives anything else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest

from devharness.sim_agent import GiB, SimAgent
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.support.scheduler import SchedulerHandle
from tests.support.wait import wait_until

Stub = scheduler_pb2_grpc.SchedulerStub


async def load(client: Stub, name: str, **fields: Any) -> scheduler_pb2.LoadModelResponse:
    return await client.LoadModel(
        scheduler_pb2.LoadModelRequest(model=common_pb2.ModelSpec(name=name, **fields))
    )


async def available(client: Stub, name: str) -> None:
    async def done() -> bool:
        status = await client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name=name))
        return status.state == "Available"

    await wait_until(done, timeout=10, what=f"model {name} Available")


async def ready(scheduler: SchedulerHandle) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{scheduler.http_url}/ready") as r:
        return r.status


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        # numbers out of range (they stopped the reconcile loop, or came back INTERNAL)
        ({"memory": "2e19"}, "model.memory", "more than 1Ei"),
        ({"memory": "1e400"}, "model.memory", "out of range"),
        ({"gpu_memory": "1e999999999"}, "model.gpuMemory", "out of range"),
        ({"memory": "9" * 4400}, "model.memory", "too long"),
        ({"replicas": 2**31}, "model.replicas", "expected 1 to 10,000"),
        # fields too large for every status (every list and watch failed)
        ({"requirements": ["x" * 600_000]}, "model.requirements", "at most 253"),
        ({"requirements": [f"r{n}" for n in range(65)]}, "model.requirements", "at most 64"),
        ({"parameters": {f"p{n}": "v" for n in range(65)}}, "model.parameters", "at most 64"),
        ({"parameters": {"extra": "v" * 5000}}, "model.parameters", "at most 4,096"),
        ({"storage_uri": "gs://b/" + "x" * 5000}, "model.storageUri", "at most 4,096"),
        ({"secret_name": "x_" * 3000}, "model.secretName", "(6,000 characters)"),
        ({"storage_uri": "https:user:pa55@host/p"}, "model.storageUri", "needs a host"),
        ({"storage_uri": "//user:pa55@host/p"}, "model.storageUri", "without a scheme"),
        ({"storage_uri": "https://u:pa/55@h/p"}, "model.storageUri", "not a port number"),
    ],
)
async def test_a_value_out_of_bounds_is_refused_at_load_naming_the_field(
    client: Stub, fields: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await load(client, "huge", **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field) and says in caught.value.details()
    assert len(caught.value.details()) < 400 and "pa55" not in caught.value.details()


async def test_an_agent_with_memory_out_of_range_is_refused_and_placement_goes_on(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    """A replica with 2 EiB of memory and 1000 % overcommit (past 64 bits once multiplied)
    is refused at its hello; models still go to the others, and the scheduler stays ready."""
    huge = await agents("huge", memory_bytes=2 * 2**60, overcommit_percentage=1000)
    await wait_until(lambda: huge.closed_with is not None, what="the huge agent refused")
    assert huge.closed_with == grpc.StatusCode.INVALID_ARGUMENT
    await agents("normal", memory_bytes=8 * GiB)
    await load(client, "iris", server="", memory="1Gi")
    await available(client, "iris")
    assert await ready(scheduler) == 200


async def test_a_reconcile_loop_error_is_survived(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any], monkeypatch: Any
) -> None:
    """A bug outside any model's pass (here: the drains' bookkeeping raising once) is logged
    and counted; the loop goes on and the next model is placed."""
    service = scheduler.service
    real = service._finish_drains
    calls = {"n": 0}

    def broken(now: float) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        real(now)

    monkeypatch.setattr(service, "_finish_drains", broken)
    agent: SimAgent = await agents("a")
    await load(client, "iris")
    await available(client, "iris")
    assert calls["n"] > 1 and ("iris", 1) in [(c.model, c.version) for c in agent.loads]
    assert await ready(scheduler) == 200
    value = service._metrics.registry.get_sample_value("gpuplace_scheduler_reconcile_errors_total")
    assert value == 1


async def test_a_malformed_request_is_invalid_argument_without_a_traceback(
    scheduler: SchedulerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage bytes on either API are answered, never logged with a traceback each (an
    unauthenticated log flood)."""
    async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
        raw = channel.unary_unary("/gpuplace.scheduler.v1.Scheduler/LoadModel")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\xff\xff\xff\xff not a message")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid LoadModelRequest" in caught.value.details()
    async with grpc.aio.insecure_channel(scheduler.agent_address) as channel:
        stream = channel.stream_stream("/gpuplace.agent.v1.AgentService/Connect")
        call = stream()
        await call.write(b"\xff\xff\xff\xff not a message")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]


async def test_an_unknown_long_name_is_not_found_in_a_short_answer(client: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name="x" * 100_000))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details()) < 200 and "100,000 characters" in caught.value.details()


async def test_reasons_per_server_are_cut_short(client: Stub, agents: Callable[..., Any]) -> None:
    """A model that needs 64 long capabilities, refused by 10 servers: a reason each, each
    at most 300 characters, however long the list of what is missing."""
    for number in range(10):
        await agents(f"s{number}")
    needs = [f"{n:02d}-" + "c" * 250 for n in range(64)]
    await load(client, "picky", requirements=needs)

    async def refused() -> scheduler_pb2.ModelStatus | None:
        status = await client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name="picky"))
        return status if len(status.server_reasons) == 10 else None

    status = await wait_until(refused, what="a reason from each of the 10 servers")
    assert all(len(r.reason) <= 300 for r in status.server_reasons)
    assert len(status.reason) <= 2000


async def test_a_load_its_agent_finished_while_its_stream_was_down_is_kept(
    client: Stub, agents: Callable[..., Any]
) -> None:
    """A pinned model's only agent drops its stream during the load, which finishes: on
    reconnect its hello reports the copy and the model is Available, nothing unloaded, the
    replica not excluded."""
    agent: SimAgent = await agents("solo", silent={"iris"})
    await load(client, "iris", server="solo")
    await wait_until(lambda: agent.loads, what="the load sent")
    await agent.disconnect()
    agent.loaded["iris"] = 1  # the load finished meanwhile
    agent.silent.clear()
    await agent.connect()
    await available(client, "iris")
    assert agent.unloads == []
    status = await client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name="iris"))
    assert [(r.server, r.state) for r in status.replicas] == [("solo", "Available")]
