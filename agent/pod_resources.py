"""Which GPUs the kubelet gave this pod's inference container: the PodResources API.

Under the NVIDIA device plugin only the container that requests `nvidia.com/gpu` (the
inference server) is given devices; the agent sidecar asks the kubelet which ones, over its
unix socket (`v1.PodResourcesLister`: `Get` for this pod, `List` where the kubelet has no
`Get`), and reports exactly those. Device IDs are GPU or MIG UUIDs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from protos import podresources_pb2, podresources_pb2_grpc

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Assigned:
    """The kubelet answered: these devices are the inference container's (maybe none)."""

    uuids: tuple[str, ...]


@dataclass(frozen=True)
class NotListed:
    """The kubelet answered, but not about this pod or its inference container."""

    reason: str


@dataclass(frozen=True)
class NoKubelet:
    """No answer from the kubelet (no socket, not reachable, an error)."""

    reason: str


Answer = Assigned | NotListed | NoKubelet


async def assigned_gpus(
    socket_path: str, pod: str, namespace: str, container: str, timeout_s: float = 5.0
) -> Answer:
    """Ask the kubelet at `socket_path` for the nvidia.com/gpu devices of `container` in
    pod `namespace/pod`."""
    if not await asyncio.to_thread(os.path.exists, socket_path):
        return NoKubelet(f"no PodResources socket at {socket_path}")
    async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
        stub = podresources_pb2_grpc.PodResourcesListerStub(channel)
        try:
            pod_resources = await _get(stub, pod, namespace, timeout_s)
        except grpc.aio.AioRpcError as exc:
            return NoKubelet(
                f"the kubelet's PodResources API at {socket_path}: {exc.code().name} "
                f"{exc.details() or ''}".rstrip()
            )
    if pod_resources is None:
        return NotListed(f"the kubelet lists no pod {namespace}/{pod}")
    for candidate in pod_resources.containers:
        if candidate.name == container:
            return Assigned(
                tuple(
                    device_id
                    for devices in candidate.devices
                    if devices.resource_name == GPU_RESOURCE
                    for device_id in devices.device_ids
                )
            )
    present = ", ".join(c.name for c in pod_resources.containers) or "none"
    return NotListed(
        f"pod {namespace}/{pod} has no container {container!r} at the kubelet (containers: "
        f"{present}); set --inference-container"
    )


async def _get(
    stub: podresources_pb2_grpc.PodResourcesListerAsyncStub,
    pod: str,
    namespace: str,
    timeout_s: float,
) -> podresources_pb2.PodResources | None:
    """This pod's resources: `Get`, else (a kubelet without it) this pod's entry of `List`."""
    try:
        reply = await stub.Get(
            podresources_pb2.GetPodResourcesRequest(pod_name=pod, pod_namespace=namespace),
            timeout=timeout_s,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
    else:
        return reply.pod_resources if reply.HasField("pod_resources") else None
    listed = await stub.List(podresources_pb2.ListPodResourcesRequest(), timeout=timeout_s)
    for candidate in listed.pod_resources:
        if candidate.name == pod and candidate.namespace == namespace:
            return candidate
    return None


class KubeletGpus:
    """The inference container's GPUs, asked of the kubelet at every GPU refresh.

    `uuids()`: the assigned UUIDs; () when the kubelet does not list this pod or container
    (no GPU is reported, CPU models are still served); None (every device NVML sees) when
    no kubelet answers and none ever did, said once with the risk it carries. A kubelet that
    stops answering keeps the last assignment: a pod's devices do not change while it runs.
    """

    def __init__(
        self, socket_path: str, pod: str, namespace: str, container: str, replica: str
    ) -> None:
        self.socket_path = socket_path
        self.pod = pod
        self.namespace = namespace
        self.container = container
        self.replica = replica
        self._last: tuple[str, ...] | None = None
        self._said = ""

    def _say(self, level: int, message: str, *args: object) -> None:
        """Log a line once for as long as it stays true (a new state says it again)."""
        text = message % args
        if text != self._said:
            self._said = text
            log.log(level, "%s", text)

    async def uuids(self, visible: Sequence[str]) -> tuple[str, ...] | None:
        answer = await assigned_gpus(self.socket_path, self.pod, self.namespace, self.container)
        match answer:
            case Assigned(uuids=uuids):
                self._last = uuids
                self._say(
                    logging.INFO,
                    "%s: the kubelet assigned %s to container %s",
                    self.replica,
                    ", ".join(uuids) if uuids else "no GPU",
                    self.container,
                )
                return uuids
            case NotListed(reason=reason):
                self._last = ()
                self._say(
                    logging.WARNING,
                    "%s: %s: reporting no GPU (CPU models are still served)",
                    self.replica,
                    reason,
                )
                return ()
            case NoKubelet(reason=reason):
                if self._last is not None:
                    self._say(
                        logging.WARNING,
                        "%s: %s; keeping the GPUs the kubelet assigned before: %s",
                        self.replica,
                        reason,
                        ", ".join(self._last) or "none",
                    )
                    return self._last
                if visible:
                    self._say(logging.WARNING, "%s", every_gpu(self.replica, reason))
                return None


def every_gpu(replica: str, reason: str) -> str:
    return (
        f"{replica}: {reason}: reporting every GPU NVML sees, which on a shared node may "
        "include other pods' GPUs (mount the kubelet's PodResources socket, or set --gpu-uuids)"
    )


class EveryGpu:
    """Every device NVML sees in this container: the PodResources socket disabled on
    purpose (a shared DRA claim gives the agent exactly the pod's GPUs), said once."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self._said = False

    async def uuids(self, visible: Sequence[str]) -> tuple[str, ...] | None:
        if visible and not self._said:
            self._said = True
            log.info(
                "%s: --pod-resources-socket is empty: reporting every GPU NVML sees in this "
                "container (%d)",
                self.replica,
                len(visible),
            )
        return None
