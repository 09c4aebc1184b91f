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

from contract.spec_rules import is_gpu_resource
from protos import podresources_pb2, podresources_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assigned:
    """The kubelet answered: these devices are the inference container's (maybe none)."""

    uuids: tuple[str, ...]


@dataclass(frozen=True)
class NotListed:
    """The kubelet answered, but not about this pod or its inference container."""

    reason: str


@dataclass(frozen=True)
class NoAnswer:
    """A PodResources socket is there, but the kubelet did not answer (an error, a time-out)."""

    reason: str


@dataclass(frozen=True)
class NoKubelet:
    """No answer from the kubelet (no socket, not reachable, an error)."""

    reason: str


Answer = Assigned | NotListed | NoAnswer | NoKubelet


def device_uuid(device_id: str) -> str:
    """The GPU or MIG UUID of a device-plugin ID (time-slicing adds "::<replica>")."""
    return device_id.split("::", 1)[0]


async def assigned_gpus(
    socket_path: str, pod: str, namespace: str, container: str, timeout_s: float = 2.0
) -> Answer:
    """Ask the kubelet at `socket_path` for the GPUs of `container` in pod `namespace/pod`.

    No socket: NoKubelet. A socket that does not answer: NoAnswer."""
    if not await asyncio.to_thread(os.path.exists, socket_path):
        return NoKubelet(f"no PodResources socket at {socket_path}")
    async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
        stub = podresources_pb2_grpc.PodResourcesListerStub(channel)
        try:
            pod_resources = await _get(stub, pod, namespace, timeout_s)
        except grpc.aio.AioRpcError as exc:
            return NoAnswer(
                f"the kubelet's PodResources API at {socket_path} did not answer: "
                f"{exc.code().name} {exc.details() or ''}".rstrip()
            )
    if pod_resources is None:
        return NotListed(f"the kubelet lists no pod {namespace}/{pod}")
    for candidate in pod_resources.containers:
        if candidate.name == container:
            return Assigned(
                tuple(
                    dict.fromkeys(
                        device_uuid(device_id)
                        for devices in candidate.devices
                        if is_gpu_resource(devices.resource_name)
                        for device_id in devices.device_ids
                    )
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
    """This pod's resources: `Get`, else this pod's entry of `List`. A kubelet answers a
    `Get` it has disabled (the feature gate, off by default before Kubernetes 1.34) and a
    pod it does not know with the same code, UNKNOWN: every answer but an unreachable
    kubelet is asked again with `List`, which every kubelet since 1.28 serves."""
    try:
        reply = await stub.Get(
            podresources_pb2.GetPodResourcesRequest(pod_name=pod, pod_namespace=namespace),
            timeout=timeout_s,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise
    else:
        if reply.HasField("pod_resources"):
            return reply.pod_resources
    listed = await stub.List(podresources_pb2.ListPodResourcesRequest(), timeout=timeout_s)
    for candidate in listed.pod_resources:
        if candidate.name == pod and candidate.namespace == namespace:
            return candidate
    return None


class KubeletGpus:
    """The inference container's GPUs, asked of the kubelet at the hello and every periodic
    GPU refresh (a load's readings keep the last answer).

    `uuids()`: the assigned UUIDs; () when the kubelet does not list this pod or container,
    or does not answer (no GPU is reported, CPU models are still served); None (every
    device NVML sees) when there is no socket at all, said once with the risk it carries.
    Once the kubelet has answered, a kubelet that stops answering keeps the last
    assignment: a pod's devices do not change while it runs.
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
            case NoAnswer(reason=reason) | NoKubelet(reason=reason) if self._last is not None:
                self._say(
                    logging.WARNING,
                    "%s: %s; keeping the GPUs the kubelet assigned before: %s",
                    self.replica,
                    reason,
                    ", ".join(self._last) or "none",
                )
                return self._last
            case NoAnswer(reason=reason):
                # Not every device: with NVIDIA_VISIBLE_DEVICES=all that is other pods' too.
                self._say(
                    logging.WARNING,
                    "%s: %s: reporting no GPU until it answers (CPU models are still served)",
                    self.replica,
                    reason,
                )
                return ()
            case NoKubelet(reason=reason):
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
