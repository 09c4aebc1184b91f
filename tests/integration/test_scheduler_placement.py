"""The scheduler over real gRPC, with simulated agents speaking the real protocol."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest

from devharness.sim_agent import GiB, SimAgent, SimGpu
from protos import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.support.scheduler import SchedulerHandle, running_scheduler
from tests.support.wait import wait_until

# Seldon Core 2's default MLServer capabilities.
MLSERVER_CAPABILITIES = (
    "mlserver", "alibi-detect", "alibi-explain", "huggingface", "lightgbm", "mlflow", "python",
    "sklearn", "spark-mlib", "xgboost",
)  # fmt: skip
Stub = scheduler_pb2_grpc.SchedulerStub


def spec(name: str, **fields: Any) -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(name=name, **fields)


async def load(client: Stub, name: str, **fields: Any) -> scheduler_pb2.LoadModelResponse:
    return await client.LoadModel(scheduler_pb2.LoadModelRequest(model=spec(name, **fields)))


async def status(client: Stub, name: str) -> scheduler_pb2.ModelStatus:
    return await client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name=name))


async def wait_state(client: Stub, name: str, state: str, timeout: float = 10) -> Any:
    async def reached() -> scheduler_pb2.ModelStatus | None:
        current = await status(client, name)
        return current if current.state == state else None

    return await wait_until(reached, timeout=timeout, what=f"model {name} to be {state}")


def where(model: scheduler_pb2.ModelStatus, state: str = "Available") -> set[str]:
    return {f"{r.server}-{r.replica_index}" for r in model.replicas if r.state == state}


async def seed_cluster(agents: Callable[..., Any]) -> dict[str, SimAgent]:
    """The seed document's cluster: `mlserver` x2 (no GPU capability) and
    `mlserver-llm-local-gpu` x1 with extraCapabilities model-on-gpu and two 40 GiB GPUs."""
    return {
        "mlserver-0": await agents("mlserver", index=0, capabilities=MLSERVER_CAPABILITIES),
        "mlserver-1": await agents("mlserver", index=1, capabilities=MLSERVER_CAPABILITIES),
        "gpu-0": await agents(
            "mlserver-llm-local-gpu",
            index=0,
            capabilities=(*MLSERVER_CAPABILITIES, "model-on-gpu"),
            memory_bytes=360 * GiB,
            gpus=[
                SimGpu("GPU-aaaa", 40 * GiB, 38 * GiB, index=0),
                SimGpu("GPU-bbbb", 40 * GiB, 30 * GiB, index=1),
            ],
        ),
    }


async def wait_connected(scheduler: SchedulerHandle, count: int) -> None:
    await wait_until(
        lambda: sum(a.connected for a in scheduler.service.agents()) == count,
        what=f"{count} agents connected",
    )


async def test_seed_scenario_llama3_lands_only_on_the_gpu_server(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    cluster = await seed_cluster(agents)
    await wait_connected(scheduler, 3)
    await load(client, "llama3", requirements=["model-on-gpu"], gpu_memory="20Gi")
    model = await wait_state(client, "llama3", "Available")
    assert where(model) == {"mlserver-llm-local-gpu-0"}
    # Best fit: the 30 GiB-free device, leaving the larger one whole.
    assert list(model.replicas[0].device_uuids) == ["GPU-bbbb"]
    assert cluster["mlserver-0"].loads == [] and cluster["mlserver-1"].loads == []
    # A CPU sklearn model on 2 replicas goes to the one server with two.
    await load(client, "iris", requirements=["sklearn"], replicas=2, memory="1Gi")
    iris = await wait_state(client, "iris", "Available")
    assert where(iris) == {"mlserver-0", "mlserver-1"}


async def test_too_big_for_any_single_gpu_is_refused_with_a_reason_per_server(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    await seed_cluster(agents)
    await wait_connected(scheduler, 3)
    await load(client, "huge", requirements=["model-on-gpu"], gpu_memory="60Gi")
    model = await wait_state(client, "huge", "ScheduleFailed")
    reasons = {r.server: r.reason for r in model.server_reasons}
    assert set(reasons) == {"mlserver", "mlserver-llm-local-gpu"}
    assert "model-on-gpu" in reasons["mlserver"]
    assert "GiB" in reasons["mlserver-llm-local-gpu"]


async def test_pinned_to_a_server_without_room_fails_and_names_only_it(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    cluster = await seed_cluster(agents)
    await wait_connected(scheduler, 3)
    await load(
        client,
        "llama3",
        server="mlserver-llm-local-gpu",
        requirements=["model-on-gpu"],
        gpu_memory="39Gi",
    )
    model = await wait_state(client, "llama3", "ScheduleFailed")
    assert [r.server for r in model.server_reasons] == ["mlserver-llm-local-gpu"]
    assert all(not agent.loads for agent in cluster.values())


async def test_a_failed_load_is_retried_on_another_server(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    first = await agents("a-server", index=0, fail={"iris": "artifact unreadable"})
    second = await agents("b-server", index=0)
    await wait_connected(scheduler, 2)
    await load(client, "iris", requirements=["sklearn"])
    model = await wait_state(client, "iris", "Available")
    assert [c.model for c in first.loads] == ["iris"]
    assert [c.model for c in second.loads] == ["iris"]
    assert where(model) == {"b-server-0"}
    failed = [r for r in model.replicas if r.state == "LoadFailed"]
    assert [(r.server, r.reason) for r in failed] == [("a-server", "artifact unreadable")]


async def test_a_pinned_model_whose_load_fails_is_not_tried_elsewhere(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    pinned = await agents("a-server", index=0, fail={"iris": "boom"})
    other = await agents("b-server", index=0)
    await wait_connected(scheduler, 2)
    await load(client, "iris", server="a-server")
    model = await wait_state(client, "iris", "Failed")
    assert len(pinned.loads) == 1
    assert other.loads == []
    assert [r.server for r in model.server_reasons] == ["a-server"]


async def test_a_load_that_times_out_is_retried_elsewhere(tmp_path: Any) -> None:
    from tests.support.scheduler import running_scheduler

    async with (
        running_scheduler(tmp_path, load_timeout_s=0.3) as scheduler,
        grpc.aio.insecure_channel(scheduler.client_address) as channel,
    ):
        client = scheduler_pb2_grpc.SchedulerStub(channel)
        mute = await SimAgent(scheduler.agent_address, "a-server", silent={"iris"}).connect()
        good = await SimAgent(scheduler.agent_address, "b-server").connect()
        await wait_connected(scheduler, 2)
        await load(client, "iris")
        model = await wait_state(client, "iris", "Available")
        assert where(model) == {"b-server-0"}, model
        assert "timed out" in next(r for r in model.replicas if r.server == "a-server").reason
        # The scheduler told the silent agent to drop the late load.
        await wait_until(lambda: mute.unloads, what="an unload for the timed-out load")
        await mute.disconnect()
        await good.disconnect()


async def test_agent_disconnect_moves_its_models_after_the_grace_period(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    first = await agents("a-server", index=0)
    await wait_connected(scheduler, 1)
    await load(client, "iris")
    await wait_state(client, "iris", "Available")
    second = await agents("b-server", index=0)
    await wait_connected(scheduler, 2)
    await first.disconnect()
    model = await wait_until(
        lambda: _available_on(client, "iris", "b-server-0"), what="iris moved to b-server"
    )
    assert where(model) == {"b-server-0"}
    assert [c.model for c in second.loads] == ["iris"]


async def test_an_agent_back_within_the_grace_period_keeps_its_models(
    tmp_path: Any,
) -> None:
    from tests.support.scheduler import running_scheduler

    async with (
        running_scheduler(tmp_path, disconnect_grace_s=30) as scheduler,
        grpc.aio.insecure_channel(scheduler.client_address) as channel,
    ):
        client = scheduler_pb2_grpc.SchedulerStub(channel)
        agent = await SimAgent(scheduler.agent_address, "a-server").connect()
        other = await SimAgent(scheduler.agent_address, "b-server").connect()
        await wait_connected(scheduler, 2)
        await load(client, "iris")
        await wait_state(client, "iris", "Available")
        holder, spare = (agent, other) if agent.loaded else (other, agent)
        await holder.disconnect()
        await holder.connect()
        await wait_until(lambda: holder.welcomed == 2, what="the second welcome")
        model = await wait_state(client, "iris", "Available")
        assert where(model) == {holder.name}
        assert len(holder.loads) == 1 and spare.loads == []
        await holder.disconnect()
        await spare.disconnect()


async def _available_on(client: Stub, name: str, replica: str) -> Any:
    model = await status(client, name)
    return model if replica in where(model) else None


async def test_a_changed_spec_makes_a_new_version_and_unloads_the_old_after(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    agent = await agents("a-server", index=0)
    await wait_connected(scheduler, 1)
    first = await load(client, "iris", storage_uri="/models/iris-v1")
    await wait_state(client, "iris", "Available")
    same = await load(client, "iris", storage_uri="/models/iris-v1")
    assert (same.version, same.changed) == (first.version, False)
    second = await load(client, "iris", storage_uri="/models/iris-v2")
    assert second.version == first.version + 1
    model = await wait_until(
        lambda: _version_available(client, "iris", second.version), what="version 2 available"
    )
    assert [(c.storage_uri, c.version) for c in agent.loads] == [
        ("/models/iris-v1", 1),
        ("/models/iris-v2", 2),
    ]
    # Reloaded in place: the name the server sees did not change, so no unload was sent.
    assert agent.unloads == []
    assert [(r.version, r.state) for r in model.replicas] == [(2, "Available")]


async def _version_available(client: Stub, name: str, version: int) -> Any:
    model = await status(client, name)
    ok = model.version == version and model.state == "Available"
    return model if ok and all(r.version == version for r in model.replicas) else None


async def test_scaling_replicas_keeps_the_version(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    for index in range(3):
        await agents("a-server", index=index)
    await wait_connected(scheduler, 3)
    first = await load(client, "iris", replicas=1)
    await wait_state(client, "iris", "Available")
    scaled = await load(client, "iris", replicas=3)
    assert scaled.version == first.version
    model = await wait_until(
        lambda: _available_count(client, "iris", 3), what="three available replicas"
    )
    assert where(model) == {"a-server-0", "a-server-1", "a-server-2"}
    await load(client, "iris", replicas=1)
    model = await wait_until(lambda: _available_count(client, "iris", 1), what="one replica")
    assert len(model.replicas) == 1


async def _available_count(client: Stub, name: str, count: int) -> Any:
    model = await status(client, name)
    return (
        model
        if model.state == "Available"
        and len(model.replicas) == count
        and all(r.state == "Available" for r in model.replicas)
        else None
    )


async def test_unload_removes_the_model_from_every_replica(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    a = await agents("a-server", index=0)
    b = await agents("a-server", index=1)
    await wait_connected(scheduler, 2)
    await load(client, "iris", replicas=2)
    await wait_state(client, "iris", "Available")
    await client.UnloadModel(scheduler_pb2.UnloadModelRequest(name="iris"))

    async def gone() -> bool:
        try:
            await status(client, "iris")
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    await wait_until(gone, what="iris gone")
    assert a.loaded == {} and b.loaded == {}


async def test_drain_moves_models_first_then_completes(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    leaving = await agents("a-server", index=0)
    await wait_connected(scheduler, 1)
    await load(client, "iris")
    await load(client, "stuck", requirements=["only-here"])
    await wait_state(client, "iris", "Available")
    staying = await agents("b-server", index=0)
    await wait_connected(scheduler, 2)
    leaving.drain()
    await wait_until(lambda: leaving.drain_complete is not None, what="drain complete")
    model = await status(client, "iris")
    assert where(model) == {"b-server-0"}
    assert "iris" in staying.loaded and "iris" not in leaving.loaded
    assert leaving.drain_complete is not None and list(leaving.drain_complete.stranded) == []


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"name": "Bad_Name"}, "model.name", "DNS-1123"),
        ({"name": "ok", "replicas": 0}, "model.replicas", "expected 1 to 10,000"),
        ({"name": "ok", "replicas": 2, "min_replicas": 3}, "model.minReplicas", "0 to replicas"),
        ({"name": "ok", "memory": "lots"}, "model.memory", "not a quantity"),
        ({"name": "ok", "gpu_memory": "-1Gi"}, "model.gpuMemory", "negative"),
        ({"name": "ok", "storage_uri": "ftp://host/x"}, "model.storageUri", "not supported"),
        (
            {"name": "ok", "storage_uri": "s3://key:secret@bucket/x"},
            "model.storageUri",
            "carries no user, password or port",
        ),
        ({"name": "ok", "namespace": "Team_A"}, "model.namespace", "DNS-1123"),
        ({"name": "ok", "server": "../etc"}, "model.server", "DNS-1123"),
        ({"name": "ok", "gpus": 2}, "model.gpus", "needs gpuMemory"),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["load", "dry-run"])
async def test_bad_input_is_invalid_argument_naming_the_field(
    client: Stub, fields: dict[str, Any], field: str, rule: str, dry_run: bool
) -> None:
    model = common_pb2.ModelSpec(**fields)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if dry_run:
            await client.PlanModel(scheduler_pb2.PlanModelRequest(model=model))
        else:
            await client.LoadModel(scheduler_pb2.LoadModelRequest(model=model))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field)
    assert rule in caught.value.details()


async def test_an_unknown_model_is_not_found(client: Stub) -> None:
    for call in (
        client.GetModelStatus(scheduler_pb2.GetModelStatusRequest(name="nope")),
        client.UnloadModel(scheduler_pb2.UnloadModelRequest(name="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------ replicas as in Seldon


async def test_replicas_that_do_not_fit_fail_unless_min_replicas_allows_a_partial_placement(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any]
) -> None:
    cluster = await seed_cluster(agents)
    await wait_connected(scheduler, 3)
    # Three replicas of one server are asked for; no server has three.
    await load(client, "iris", requirements=["sklearn"], replicas=3)
    refused = await wait_state(client, "iris", "ScheduleFailed")
    reasons = {r.server: r.reason for r in refused.server_reasons}
    assert reasons["mlserver"] == "only 2 of 3 requested replicas fit; the server has 2 connected"
    assert all(not agent.loads for agent in cluster.values())
    scaled = await load(client, "iris", requirements=["sklearn"], replicas=3, min_replicas=2)
    assert scaled.version == 1  # minReplicas alone scales in place
    model = await wait_until(
        lambda: _available_count(client, "iris", 2), what="two of three replicas available"
    )
    assert where(model) == {"mlserver-0", "mlserver-1"}
    assert (model.available_replicas, model.spec.replicas) == (2, 3)
    assert model.reason == "partial: 2/3 replicas fit (minReplicas 2); the rest is retried"


# ------------------------------------------------------------------ dry run


async def dry_run(client: Stub, name: str, **fields: Any) -> scheduler_pb2.PlanModelResponse:
    return await client.PlanModel(scheduler_pb2.PlanModelRequest(model=spec(name, **fields)))


def planned(reply: scheduler_pb2.PlanModelResponse) -> list[tuple[str, str, list[str]]]:
    return [(f"{c.server}-{c.replica_index}", c.state, list(c.device_uuids)) for c in reply.planned]


def state_file(path: Path) -> dict[str, list[Any]]:
    """Every row of the scheduler's state file."""
    with closing(sqlite3.connect(path)) as db:
        return {
            table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("meta", "models")
        }


async def test_a_dry_run_answers_where_the_model_would_go_and_changes_nothing(
    scheduler: SchedulerHandle, client: Stub, agents: Callable[..., Any], tmp_path: Path
) -> None:
    cluster = await seed_cluster(agents)
    await wait_connected(scheduler, 3)
    sklearn: dict[str, Any] = {"requirements": ["sklearn"], "memory": "1Gi"}
    await load(client, "iris", replicas=2, **sklearn)
    await wait_until(lambda: _available_count(client, "iris", 2), what="iris on two replicas")
    models = await client.ListModels(scheduler_pb2.ListModelsRequest())
    saved = state_file(tmp_path / "state.db")
    loads = {name: list(agent.loads) for name, agent in cluster.items()}

    llama = await dry_run(client, "llama3", requirements=["model-on-gpu"], gpu_memory="20Gi")
    assert (llama.name, llama.version, llama.changed, llama.state) == (
        "llama3",
        1,
        True,
        "Progressing",
    )
    # Best fit, as the real placement: the 30 GiB-free device.
    assert planned(llama) == [("mlserver-llm-local-gpu-0", "Planned", ["GPU-bbbb"])]
    assert llama.reason == ""
    assert [r.server for r in llama.server_reasons] == ["mlserver"]

    same = await dry_run(client, "iris", replicas=2, **sklearn)
    assert (same.version, same.changed, same.state) == (1, False, "Available")
    assert planned(same) == [("mlserver-0", "Available", []), ("mlserver-1", "Available", [])]

    more = await dry_run(client, "iris", replicas=3, **sklearn)
    assert (more.version, more.changed, more.state) == (1, True, "ScheduleFailed")
    assert {r.server: r.reason for r in more.server_reasons} == {
        "mlserver": "only 2 of 3 requested replicas fit; the server has 2 connected",
        "mlserver-llm-local-gpu": "only 1 of 3 requested replicas fit; the server has 1 connected",
    }
    partial = await dry_run(client, "iris", replicas=3, min_replicas=2, **sklearn)
    assert (partial.state, partial.reason) == (
        "Available",
        "partial: 2/3 replicas fit (minReplicas 2); the rest is retried",
    )
    upgrade = await dry_run(client, "iris", replicas=2, storage_uri="/models/v2", **sklearn)
    assert (upgrade.version, upgrade.state) == (2, "Progressing")
    assert planned(upgrade) == [("mlserver-0", "Planned", []), ("mlserver-1", "Planned", [])]

    # Nothing happened: the models, the state file, the agents.
    assert await client.ListModels(scheduler_pb2.ListModelsRequest()) == models
    assert state_file(tmp_path / "state.db") == saved
    assert {name: list(agent.loads) for name, agent in cluster.items()} == loads
    # The next real change still gets the version the dry run announced.
    assert (
        await load(client, "iris", replicas=2, storage_uri="/models/v2", **sklearn)
    ).version == 2


async def test_a_measured_footprint_is_learned_and_places_a_model_that_declares_no_gpu_memory(
    tmp_path: Path,
) -> None:
    """Through the real scheduler: the first load of an artifact (declared 20Gi) measures
    17 GiB on an H100; a model of the same artifact that declares nothing then goes to a GPU
    with 17 GiB + 20 %, is measured in its turn, the ratio metric shows 17/20, and a
    restart keeps the figures."""
    uri = "gs://models/llama"
    footprints = {"declared": {"GPU-1": 17 * GiB}, "undeclared": {"GPU-1": 16 * GiB}}
    h100 = [
        SimGpu("GPU-1", 40 * GiB, 40 * GiB, name="NVIDIA H100", index=0),
        SimGpu("GPU-2", 40 * GiB, 40 * GiB, name="NVIDIA H100", index=1),
    ]
    async with running_scheduler(tmp_path, learned_margin_percent=20) as scheduler:
        sims = [
            await SimAgent(scheduler.agent_address, "cpu").connect(),
            await SimAgent(
                scheduler.agent_address, "gpu", gpus=h100, footprints=footprints
            ).connect(),
        ]
        try:
            await wait_connected(scheduler, 2)
            async with grpc.aio.insecure_channel(scheduler.client_address) as channel:
                client = Stub(channel)
                await load(client, "declared", storage_uri=uri, gpu_memory="20Gi")

                async def measured(name: str, samples: int) -> scheduler_pb2.ModelStatus | None:
                    current = await status(client, name)
                    learned = current.learned_footprints
                    return current if learned and learned[0].samples == samples else None

                declared = await wait_until(lambda: measured("declared", 1), what="a footprint")
                assert [(f.product, f.gpu_memory_bytes) for f in declared.learned_footprints] == [
                    ("NVIDIA H100", 17 * GiB)
                ]
                assert (declared.gpu_memory_source, declared.placement_gpu_memory_bytes) == (
                    "declared",
                    20 * GiB,
                )
                gauge = "gpuplace_scheduler_model_gpu_memory_ratio"
                registry = scheduler.service._metrics.registry
                assert registry.get_sample_value(gauge, {"model": "declared"}) == 17 / 20

                await load(client, "undeclared", storage_uri=uri)
                undeclared = await wait_state(client, "undeclared", "Available")
                want = -(-17 * GiB * 120 // 100)
                assert (undeclared.gpu_memory_source, undeclared.placement_gpu_memory_bytes) == (
                    "learned",
                    want,
                )
                (sent,) = sims[1].loads[1:]
                assert (sent.model, sent.gpu_memory_bytes, sent.device_uuids) == (
                    "undeclared",
                    want,
                    ("GPU-1",),  # binpack: the device with the least room that fits
                )
                assert where(undeclared) == {"gpu-0"}  # a GPU model now, not on `cpu`
                await wait_until(lambda: measured("undeclared", 2), what="a second footprint")
                assert registry.get_sample_value(gauge, {"model": "undeclared"}) is None
        finally:
            for sim in sims:
                await sim.disconnect()
    async with running_scheduler(tmp_path) as again:
        async with grpc.aio.insecure_channel(again.client_address) as channel:
            restored = await wait_until(
                lambda: measured_after_restart(Stub(channel)), what="the figures restored"
            )
    assert [(f.gpu_memory_bytes, f.samples) for f in restored.learned_footprints] == [(17 * GiB, 2)]
    assert restored.gpu_memory_source == "learned"


async def measured_after_restart(client: Stub) -> scheduler_pb2.ModelStatus | None:
    current = await status(client, "undeclared")
    return current if current.learned_footprints else None
