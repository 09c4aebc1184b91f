"""ServerConfig + Server -> Kubernetes StatefulSet and Service, with the agent sidecar.

Merge rules (a Server's `podSpec` overrides its ServerConfig's):

- `containers`, `initContainers` and `volumes` are merged by `name`: a Server container
  overrides the ServerConfig container of the same name field by field, and one with a new
  name is appended. Inside a container, `env` is merged by variable name (a Server variable
  replaces the one of the same name in place; new ones are appended); every other container
  field the Server sets (`resources`, `image`, `args`, ...) replaces the ServerConfig's.
- Every other pod field the Server sets replaces the ServerConfig's, scheduling fields
  included (`nodeSelector`, `affinity`, `tolerations`, `topologySpreadConstraints`, ...).

Then the agent sidecar: a container named `agent` is added when absent (image from the
render settings), and its environment gets, when absent, POD_NAME (downward API
`metadata.name`), MEMORY_REQUEST (downward API `requests.memory` of the inference
container), SELDON_SCHEDULER_HOST / SELDON_SCHEDULER_PORT and SELDON_SERVER_HTTP_PORT /
SELDON_SERVER_GRPC_PORT. SELDON_SERVER_CAPABILITIES: `Server.spec.capabilities` replaces
the list, `Server.spec.extraCapabilities` appends to it. The inference container is the
one named `mlserver`, else the first container that is not the agent.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuplace import __version__
from gpuplace.resources import (
    Bundle,
    Loaded,
    PodSpec,
    Problem,
    ResourceError,
    ServerConfigResource,
    ServerResource,
    parse_text,
    split_capabilities,
)

AGENT = "agent"
INFERENCE = "mlserver"
MODELS_VOLUME = "gpuplace-models"
MODELS_PATH = "/mnt/models"
MLSERVER_HTTP_PORT = 8080
MLSERVER_GRPC_PORT = 8081
AGENT_METRICS_PORT = 9006
AGENT_READINESS_PORT = 9008
SCHEDULER_AGENT_PORT = 9005
APP_LABEL = "gpuplace-server"

# The ServerConfig a Server gets when the files name one that is not among them: Seldon
# Core 2 installs one called `mlserver`, and the seed's Servers refer to it.
BUILTIN_SERVER_CONFIGS = {
    "mlserver": """
apiVersion: mlops.seldon.io/v1alpha1
kind: ServerConfig
metadata:
  name: mlserver
spec:
  podSpec:
    terminationGracePeriodSeconds: 120
    containers:
      - name: mlserver
        image: seldonio/mlserver:1.7.1
        env:
          - name: MLSERVER_HTTP_PORT
            value: "9000"
          - name: MLSERVER_GRPC_PORT
            value: "9500"
          - name: MLSERVER_MODELS_DIR
            value: /mnt/models
          - name: MLSERVER_LOAD_MODELS_AT_STARTUP
            value: "false"
          - name: MLSERVER_PARALLEL_WORKERS
            value: "0"
        resources:
          requests:
            cpu: "1"
            memory: 1Gi
          limits:
            memory: 1Gi
        readinessProbe:
          httpGet:
            path: /v2/health/live
            port: 9000
      - name: agent
        env:
          - name: SELDON_SERVER_CAPABILITIES
            value: >-
              mlserver,alibi-detect,alibi-explain,huggingface,lightgbm,mlflow,python,sklearn,spark-mlib,xgboost
""",
}


@dataclass(frozen=True)
class RenderSettings:
    agent_image: str = f"gpuplace:{__version__}"
    scheduler_host: str = "gpuplace-scheduler"
    scheduler_port: int = SCHEDULER_AGENT_PORT
    namespace: str | None = None


@dataclass
class ResolvedServer:
    """A Server with its ServerConfig and the merged pod spec (before the agent is added)."""

    server: Loaded[ServerResource]
    config: Loaded[ServerConfigResource]
    pod_spec: dict[str, Any]
    builtin_config: bool = False

    @property
    def name(self) -> str:
        return self.server.name

    def typed_pod_spec(self) -> PodSpec:
        return PodSpec.model_validate(self.pod_spec)


@dataclass
class Rendered:
    manifests: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


# ----------------------------------------------------------------------------------------
# Merge


def merge_by_name(
    base: Sequence[dict[str, Any]], override: Sequence[dict[str, Any]], merge: Any = None
) -> list[dict[str, Any]]:
    """Items of `base` with those of `override` merged in by `name`; new names appended."""
    result = [copy.deepcopy(item) for item in base]
    index = {item.get("name"): position for position, item in enumerate(result)}
    for item in override:
        position = index.get(item.get("name"))
        if position is None:
            index[item.get("name")] = len(result)
            result.append(copy.deepcopy(item))
        elif merge is None:
            result[position] = copy.deepcopy(item)
        else:
            result[position] = merge(result[position], item)
    return result


def merge_containers(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """One container: `env` merged by name, every other field the override sets replaces."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if key == "env":
            result["env"] = merge_by_name(base.get("env") or [], value or [])
        else:
            result[key] = copy.deepcopy(value)
    return result


def merge_pod_specs(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A ServerConfig's pod spec with a Server's pod spec laid over it."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if key in ("containers", "initContainers"):
            result[key] = merge_by_name(base.get(key) or [], value or [], merge_containers)
        elif key == "volumes":
            result[key] = merge_by_name(base.get(key) or [], value or [])
        else:
            result[key] = copy.deepcopy(value)
    return result


def _builtin(name: str) -> Loaded[ServerConfigResource] | None:
    text = BUILTIN_SERVER_CONFIGS.get(name)
    if text is None:
        return None
    return parse_text(text, f"<built-in ServerConfig {name}>").server_configs[0]


def resolve_server(bundle: Bundle, server: Loaded[ServerResource]) -> ResolvedServer:
    """Find the Server's ServerConfig (in the files, else built in) and merge the pod specs."""
    name = server.obj.spec.server_config
    config = bundle.server_config(name, server.namespace)
    builtin = False
    if config is None:
        config = _builtin(name)
        builtin = True
    if config is None:
        known = sorted({c.name for c in bundle.server_configs} | set(BUILTIN_SERVER_CONFIGS))
        raise ResourceError(
            [
                server.source.problem(
                    ("spec", "serverConfig"),
                    f"no ServerConfig named {name!r} in the files given; known: {', '.join(known)}",
                )
            ]
        )
    base = config.raw["spec"]["podSpec"] or {}
    override = (server.raw.get("spec") or {}).get("podSpec") or {}
    return ResolvedServer(server, config, merge_pod_specs(base, override), builtin)


# ----------------------------------------------------------------------------------------
# The agent sidecar


def _env(container: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = container.setdefault("env", [])
    return env


def _env_value(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    for item in container.get("env") or []:
        if item.get("name") == name:
            return dict(item)
    return None


def _set_default_env(container: dict[str, Any], name: str, **entry: Any) -> None:
    if _env_value(container, name) is None:
        _env(container).append({"name": name, **entry})


def capabilities_for(resolved: ResolvedServer, agent: dict[str, Any]) -> list[str] | None:
    """The agent's capability list after the Server's `capabilities` / `extraCapabilities`."""
    spec = resolved.server.obj.spec
    current = _env_value(agent, "SELDON_SERVER_CAPABILITIES")
    if (
        current is not None
        and "value" not in current
        and (spec.capabilities is not None or spec.extra_capabilities)
    ):
        raise ResourceError(
            [
                resolved.server.source.problem(
                    ("spec", "extraCapabilities" if spec.capabilities is None else "capabilities"),
                    "the agent's SELDON_SERVER_CAPABILITIES comes from valueFrom: "
                    "capabilities cannot be combined with it",
                )
            ]
        )
    if spec.capabilities is None and not spec.extra_capabilities:
        return None  # the agent's list stays as the pod spec has it
    if spec.capabilities is not None:
        base = list(spec.capabilities)
    elif current is not None:
        base = split_capabilities(str(current.get("value") or ""))
    else:
        base = []
    result: list[str] = []
    for item in [*base, *spec.extra_capabilities]:
        if item not in result:
            result.append(item)
    return result


def _port(container: dict[str, Any], variable: str, default: int) -> str:
    entry = _env_value(container, variable)
    if entry is not None and isinstance(entry.get("value"), str) and entry["value"].isdigit():
        return str(entry["value"])
    return str(default)


def _mount(container: dict[str, Any]) -> None:
    mounts: list[dict[str, Any]] = container.setdefault("volumeMounts", [])
    if any(m.get("name") == MODELS_VOLUME or m.get("mountPath") == MODELS_PATH for m in mounts):
        return
    mounts.append({"name": MODELS_VOLUME, "mountPath": MODELS_PATH})


def add_agent(
    resolved: ResolvedServer, settings: RenderSettings
) -> tuple[dict[str, Any], list[Problem]]:
    """The pod spec with the agent sidecar, its environment and the shared model folder."""
    pod = copy.deepcopy(resolved.pod_spec)
    warnings: list[Problem] = []
    where = resolved.server.source
    containers: list[dict[str, Any]] = pod.setdefault("containers", [])
    inference = next(
        (c for c in containers if c.get("name") == INFERENCE),
        next((c for c in containers if c.get("name") != AGENT), None),
    )
    if inference is None:
        raise ResourceError(
            [
                where.problem(
                    ("spec", "serverConfig"),
                    f"the pod of Server {resolved.name!r} (ServerConfig "
                    f"{resolved.config.name!r}) has no inference container: add one (e.g. named "
                    "mlserver) next to the agent",
                )
            ]
        )
    if not inference.get("image"):
        raise ResourceError(
            [
                where.problem(
                    ("spec", "podSpec", "containers"),
                    f"the inference container {inference['name']!r} has no image (neither the "
                    f"Server nor ServerConfig {resolved.config.name!r} sets one)",
                )
            ]
        )
    agent = next((c for c in containers if c.get("name") == AGENT), None)
    if agent is None:
        agent = {"name": AGENT}
        containers.append(agent)
    if not agent.get("image"):
        agent["image"] = settings.agent_image
        agent.setdefault("command", ["gpuplace", "agent"])
        agent.setdefault("args", [f"--model-repository={MODELS_PATH}"])
        agent.setdefault(
            "ports",
            [
                {"name": "agent-metrics", "containerPort": AGENT_METRICS_PORT},
                {"name": "agent-ready", "containerPort": AGENT_READINESS_PORT},
            ],
        )
        agent.setdefault(
            "readinessProbe", {"httpGet": {"path": "/ready", "port": AGENT_READINESS_PORT}}
        )
        agent.setdefault(
            "livenessProbe", {"httpGet": {"path": "/live", "port": AGENT_READINESS_PORT}}
        )
    _set_default_env(agent, "POD_NAME", valueFrom={"fieldRef": {"fieldPath": "metadata.name"}})
    _set_default_env(
        agent,
        "MEMORY_REQUEST",
        valueFrom={
            "resourceFieldRef": {"containerName": inference["name"], "resource": "requests.memory"}
        },
    )
    _set_default_env(agent, "SELDON_SCHEDULER_HOST", value=settings.scheduler_host)
    _set_default_env(agent, "SELDON_SCHEDULER_PORT", value=str(settings.scheduler_port))
    _set_default_env(
        agent,
        "SELDON_SERVER_HTTP_PORT",
        value=_port(inference, "MLSERVER_HTTP_PORT", MLSERVER_HTTP_PORT),
    )
    _set_default_env(
        agent,
        "SELDON_SERVER_GRPC_PORT",
        value=_port(inference, "MLSERVER_GRPC_PORT", MLSERVER_GRPC_PORT),
    )
    capabilities = capabilities_for(resolved, agent)
    if capabilities is not None:
        value = ",".join(capabilities)
        env = _env(agent)
        for item in env:
            if item.get("name") == "SELDON_SERVER_CAPABILITIES":
                item.clear()
                item.update({"name": "SELDON_SERVER_CAPABILITIES", "value": value})
                break
        else:
            env.append({"name": "SELDON_SERVER_CAPABILITIES", "value": value})
    # The agent copies artifacts into a folder the inference server loads them from.
    volumes: list[dict[str, Any]] = pod.setdefault("volumes", [])
    if not any(v.get("name") == MODELS_VOLUME for v in volumes):
        volumes.append({"name": MODELS_VOLUME, "emptyDir": {}})
    _mount(agent)
    _mount(inference)
    _set_default_env(inference, "MLSERVER_MODELS_DIR", value=MODELS_PATH)
    _set_default_env(inference, "MLSERVER_LOAD_MODELS_AT_STARTUP", value="false")

    requests = (inference.get("resources") or {}).get("requests") or {}
    if "memory" not in requests:
        warnings.append(
            where.problem(
                ("spec", "podSpec"),
                f"the inference container {inference['name']!r} has no memory request: the agent's "
                "MEMORY_REQUEST will not reflect what the pod may use",
            )
        )
    warnings.extend(extended_resource_warnings(resolved))
    return pod, warnings


def extended_resource_warnings(resolved: ResolvedServer) -> list[Problem]:
    """Kubernetes rejects a pod whose extended-resource (GPU) request differs from its limit."""
    warnings: list[Problem] = []
    for container in resolved.pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        for name in sorted(set(requests) | set(limits)):
            if "/" not in name or name.startswith(("kubernetes.io/", "requests.")):
                continue
            if name in requests and name in limits and str(requests[name]) != str(limits[name]):
                warnings.append(
                    resolved.server.source.problem(
                        ("spec", "podSpec", "containers"),
                        f"container {container.get('name')!r} requests {name} {requests[name]} but "
                        f"limits it to {limits[name]}: Kubernetes rejects such a pod (an extended "
                        "resource's request must equal its limit)",
                    )
                )
            elif name in requests and name not in limits:
                warnings.append(
                    resolved.server.source.problem(
                        ("spec", "podSpec", "containers"),
                        f"container {container.get('name')!r} requests {name} without a limit: "
                        "Kubernetes needs a limit for an extended resource",
                    )
                )
    return warnings


# ----------------------------------------------------------------------------------------
# Manifests


def _labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_LABEL,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "gpuplace",
    }


def _selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP_LABEL, "app.kubernetes.io/instance": name}


def _metadata(name: str, namespace: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = _labels(name)
    return metadata


def render_server(resolved: ResolvedServer, settings: RenderSettings) -> Rendered:
    pod, warnings = add_agent(resolved, settings)
    if resolved.builtin_config:
        warnings.insert(
            0,
            resolved.server.source.problem(
                ("spec", "serverConfig"),
                f"no ServerConfig {resolved.config.name!r} in the files given: "
                "using gpuplace's built-in one",
            ),
        )
    name = resolved.name
    namespace = resolved.server.namespace or settings.namespace
    spec = resolved.server.obj.spec
    agent = next(c for c in pod["containers"] if c.get("name") == AGENT)
    http_port = int(_port(agent, "SELDON_SERVER_HTTP_PORT", MLSERVER_HTTP_PORT))
    grpc_port = int(_port(agent, "SELDON_SERVER_GRPC_PORT", MLSERVER_GRPC_PORT))
    statefulset_spec: dict[str, Any] = {
        "replicas": 1 if spec.replicas is None else spec.replicas,
        "serviceName": name,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": _selector(name)},
        "template": {
            "metadata": {
                "labels": _labels(name),
                "annotations": {"gpuplace/server-config": resolved.config.name},
            },
            "spec": pod,
        },
    }
    templates = resolved.config.raw["spec"].get("volumeClaimTemplates") or []
    if templates:
        statefulset_spec["volumeClaimTemplates"] = [
            {"metadata": {"name": item["name"]}, "spec": copy.deepcopy(item["spec"])}
            for item in templates
        ]
    if spec.stateful_set_persistent_volume_claim_retention_policy is not None:
        statefulset_spec["persistentVolumeClaimRetentionPolicy"] = copy.deepcopy(
            spec.stateful_set_persistent_volume_claim_retention_policy
        )
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(name, namespace),
        "spec": statefulset_spec,
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace),
        "spec": {
            "clusterIP": "None",
            "selector": _selector(name),
            "ports": [
                {"name": "http", "port": http_port, "targetPort": http_port, "protocol": "TCP"},
                {"name": "grpc", "port": grpc_port, "targetPort": grpc_port, "protocol": "TCP"},
                {
                    "name": "agent-metrics",
                    "port": AGENT_METRICS_PORT,
                    "targetPort": AGENT_METRICS_PORT,
                    "protocol": "TCP",
                },
            ],
        },
    }
    return Rendered([statefulset, service], warnings)


def render_bundle(bundle: Bundle, settings: RenderSettings) -> Rendered:
    """Every Server of the bundle, in file order; raise ResourceError listing all problems."""
    result = Rendered(warnings=list(bundle.warnings))
    problems: list[Problem] = []
    if not bundle.servers:
        raise ResourceError([Problem("<input>", "no Server in the files given: nothing to render")])
    for server in bundle.servers:
        try:
            resolved = resolve_server(bundle, server)
            rendered = render_server(resolved, settings)
        except ResourceError as exc:
            problems.extend(exc.problems)
            continue
        result.manifests.extend(rendered.manifests)
        result.warnings.extend(rendered.warnings)
    if problems:
        raise ResourceError(problems)
    return result
