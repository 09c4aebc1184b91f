"""ServerConfig + Server -> Kubernetes StatefulSet and Service, with the agent sidecar.

Merge rules (a Server's `podSpec` overrides its ServerConfig's):

- `containers`, `initContainers` and `volumes` are merged by `name`: a Server container
  overrides the ServerConfig container of the same name field by field, and one with a new
  name is appended. Inside a container, `env` is merged by variable name (a Server variable
  replaces the one of the same name in place; new ones are appended); every other container
  field the Server sets (`resources`, `image`, `args`, ...) replaces the ServerConfig's.
- Every other pod field the Server sets replaces the ServerConfig's, scheduling fields
  included (`nodeSelector`, `affinity`, `tolerations`, `topologySpreadConstraints`, ...).
- `metadata.labels` and `metadata.annotations`: the ServerConfig's, then the Server's (the
  Server wins), on the StatefulSet and on its pod template, as Seldon Core 2 does; gpuplace's
  own labels win over both (the selector and the ServiceMonitor depend on them).

The inference container is found by name: `mlserver`, else `triton`, or the name the render
settings give. A container named `agent` that runs Seldon Core 2's agent is replaced by
gpuplace's (keeping its resources and the variables gpuplace's agent reads too), and
Seldon's `rclone` container goes with it: gpuplace's agent fetches artifacts itself.
Otherwise a container named `agent` is added when absent (image from the render settings),
and its environment gets, when absent, POD_NAME (downward API `metadata.name`),
MEMORY_REQUEST (downward API `requests.memory` of the inference container),
SELDON_SCHEDULER_HOST / SELDON_SCHEDULER_PORT and SELDON_SERVER_HTTP_PORT /
SELDON_SERVER_GRPC_PORT. SELDON_SERVER_CAPABILITIES: `Server.spec.capabilities` replaces
the list, `Server.spec.extraCapabilities` appends to it. The agent writes the models into
the folder the inference server loads them from, on a volume both mount. Every container
must have an image once merged.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.settings import AgentSettings
from contract.names import SUBDOMAIN_RULE, is_dns1123_subdomain
from contract.spec_rules import is_gpu_resource
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
# The inference container, by name, in this order (unless the render settings name one).
INFERENCE_CONTAINERS = ("mlserver", "triton")
MODELS_VOLUME = "gpuplace-models"
MODELS_PATH = "/mnt/models"
AGENT_METRICS_PORT = 9006
AGENT_READINESS_PORT = 9008
SCHEDULER_AGENT_PORT = 9005
APP_LABEL = "gpuplace-server"
SERVER_CONFIG_ANNOTATION = "gpuplace/server-config"
# Where the agent reads a model's `secretName` from: <folder>/<secret name>/<key>.
STORAGE_SECRETS_PATH = "/etc/gpuplace/storage-secrets"
STORAGE_SECRETS_VARIABLE = "GPUPLACE_AGENT_STORAGE_SECRETS_DIR"
STORAGE_SECRET_VOLUME = "gpuplace-storage-secret-{index}"
TLS_PATH = "/etc/gpuplace/tls"
TLS_VOLUME = "gpuplace-tls"
# The kubelet's PodResources API: the agent asks it which GPUs the inference container has.
POD_RESOURCES_PATH = "/var/lib/kubelet/pod-resources"
POD_RESOURCES_VOLUME = "gpuplace-pod-resources"

# Seldon Core 2's agent: the repository name of its image and the command its ServerConfigs
# start it with; the prefixes of its own settings (environment variables); its drainer port,
# which the preStop hooks of its ServerConfigs call; and the container that copies artifacts
# for it.
SELDON_AGENT_IMAGE = "seldon-agent"
SELDON_AGENT_COMMAND = ["/bin/agent"]
SELDON_AGENT_SETTINGS = ("SELDON_", "CONTROL_PLANE_", "ENVOY_", "AGENT_TLS_")
SELDON_DRAINER_PORT = 9007
RCLONE = "rclone"
# Seldon's agent points these at Seldon's scheduler: gpuplace's come from the render settings.
SCHEDULER_ADDRESS = ("SELDON_SCHEDULER_HOST", "SELDON_SCHEDULER_PORT")
# The variables of Seldon Core 2's names that gpuplace's agent reads.
AGENT_READS = frozenset(
    info.validation_alias
    for info in AgentSettings.model_fields.values()
    if isinstance(info.validation_alias, str)
)
# Seldon Core 2 leaves these out when it copies a Server's metadata onto the StatefulSet:
# they describe how the Server itself was applied.
NOT_COPIED = (
    "meta.helm.sh/release-name",
    "meta.helm.sh/release-namespace",
    "kubectl.kubernetes.io/last-applied-configuration",
)


@dataclass(frozen=True)
class InferenceServer:
    """The environment variables that tell an inference server its ports and model folder."""

    http_port: str
    grpc_port: str
    models_dir: str
    default_http_port: int
    default_grpc_port: int
    # Set on the inference container when absent.
    defaults: tuple[tuple[str, str], ...] = ()
    # The Prometheus port whose page has the server's process memory ("": none, so the
    # agent measures no host memory).
    metrics_port: str = ""
    default_metrics_port: int = 0


MLSERVER = InferenceServer(
    "MLSERVER_HTTP_PORT",
    "MLSERVER_GRPC_PORT",
    "MLSERVER_MODELS_DIR",
    8080,
    8081,
    (("MLSERVER_LOAD_MODELS_AT_STARTUP", "false"),),
    "MLSERVER_METRICS_PORT",
    8082,
)
# Seldon Core 2's Triton ServerConfig passes these to tritonserver on its command line.
TRITON = InferenceServer("SERVER_HTTP_PORT", "SERVER_GRPC_PORT", "SERVER_MODELS_DIR", 8000, 8001)
# By the inference container's name; any other name is taken for MLServer.
INFERENCE_SERVERS = {"mlserver": MLSERVER, "triton": TRITON}

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


def storage_secret_problem(name: str) -> str | None:
    """Why `name` cannot be a Secret mounted into the agent (None: it can)."""
    if is_dns1123_subdomain(name):
        return None
    return f"{name!r} is not a Secret name: a Secret's name is {SUBDOMAIN_RULE}"


@dataclass(frozen=True)
class RenderSettings:
    agent_image: str = f"gpuplace:{__version__}"
    scheduler_host: str = "gpuplace-scheduler"
    scheduler_port: int = SCHEDULER_AGENT_PORT
    namespace: str | None = None
    # The inference container's name; None: the first of INFERENCE_CONTAINERS in the pod.
    inference_container: str | None = None
    # Secrets mounted read-only into every agent at <STORAGE_SECRETS_PATH>/<name>/.
    storage_secrets: tuple[str, ...] = ()
    # A Secret as cert-manager writes it (ca.crt, tls.crt, tls.key): every agent verifies
    # the scheduler with ca.crt and shows tls.crt (mutual TLS). "": plaintext.
    tls_secret: str = ""

    def __post_init__(self) -> None:
        secrets = (*self.storage_secrets, *((self.tls_secret,) if self.tls_secret else ()))
        problems = [p for p in map(storage_secret_problem, secrets) if p]
        if problems:
            raise ValueError("; ".join(problems))


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


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def _mounted(pod: dict[str, Any]) -> set[str]:
    """The names of the volumes some container of the pod mounts."""
    return {
        str(mount.get("name"))
        for container in _containers(pod)
        for mount in container.get("volumeMounts") or []
    }


def inference_container(
    resolved: ResolvedServer, containers: list[dict[str, Any]], settings: RenderSettings
) -> dict[str, Any]:
    """The inference server's container, by name (never guessed from the containers' order)."""
    names = (
        (settings.inference_container,) if settings.inference_container else INFERENCE_CONTAINERS
    )
    for name in names:
        for container in containers:
            if container.get("name") == name:
                return container
    present = ", ".join(repr(c.get("name")) for c in containers) or "none"
    raise ResourceError(
        [
            resolved.server.source.problem(
                ("spec", "podSpec", "containers"),
                f"the pod of Server {resolved.name!r} (ServerConfig {resolved.config.name!r}) "
                f"has no inference container: no container is named "
                f"{' or '.join(map(repr, names))} (its containers: {present}); name it with "
                "`gpuplace render --inference-container NAME`",
            )
        ]
    )


def is_seldon_agent(container: dict[str, Any]) -> bool:
    """Whether a container runs Seldon Core 2's agent (its image, or its ServerConfigs' command)."""
    image = str(container.get("image") or "")
    repository = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return repository == SELDON_AGENT_IMAGE or container.get("command") == SELDON_AGENT_COMMAND


def _kept(variable: str) -> bool:
    """Whether gpuplace's agent keeps a variable of the Seldon agent container it replaces."""
    if not variable.startswith(SELDON_AGENT_SETTINGS):
        return True  # not one of Seldon's agent settings: NVIDIA_VISIBLE_DEVICES, POD_NAMESPACE...
    return variable in AGENT_READS and variable not in SCHEDULER_ADDRESS


def _drop_hooks_on(pod: dict[str, Any], port: str) -> list[str]:
    """Remove the preStop hooks that call `port` over HTTP; the names of their containers."""
    names: list[str] = []
    for container in _containers(pod):
        lifecycle = container.get("lifecycle") or {}
        hook = (lifecycle.get("preStop") or {}).get("httpGet") or {}
        if str(hook.get("port")) == port:
            del lifecycle["preStop"]
            if not lifecycle:
                del container["lifecycle"]
            names.append(str(container.get("name")))
    return names


def replace_seldon_agent(
    resolved: ResolvedServer,
    pod: dict[str, Any],
    inference: dict[str, Any],
    settings: RenderSettings,
) -> list[Problem]:
    """Put an empty gpuplace agent where Seldon Core 2's agent was; the warnings saying so.

    Kept: the container's resources and securityContext, its mounts of volumes the inference
    container mounts too (the model folder), and its variables except Seldon's own settings
    that gpuplace's agent does not read and Seldon's scheduler address. Seldon's `rclone`
    container goes (its other mounts move to the agent, which now reads local artifacts), and
    so do the preStop hooks that called Seldon's agent's drainer and the volumes that only the
    removed containers mounted.
    """
    containers: list[dict[str, Any]] = pod["containers"]
    position = next(
        (
            index
            for index, container in enumerate(containers)
            if container.get("name") == AGENT and is_seldon_agent(container)
        ),
        None,
    )
    if position is None:
        return []
    seldon = containers[position]
    mounted_before = _mounted(pod)
    agent: dict[str, Any] = {"name": AGENT}
    for key in ("resources", "securityContext"):
        if key in seldon:
            agent[key] = copy.deepcopy(seldon[key])
    env = [item for item in seldon.get("env") or [] if _kept(str(item.get("name")))]
    if env:
        agent["env"] = env
    shared = {mount.get("name") for mount in inference.get("volumeMounts") or []}
    mounts = [m for m in seldon.get("volumeMounts") or [] if m.get("name") in shared]
    containers[position] = agent
    where = resolved.server.source
    warnings: list[Problem] = []
    rclone = next((c for c in containers if c.get("name") == RCLONE), None)
    if rclone is not None:
        containers.remove(rclone)
        paths = {mount.get("mountPath") for mount in mounts}
        moved = [m for m in rclone.get("volumeMounts") or [] if m.get("mountPath") not in paths]
        mounts.extend(moved)
        warnings.append(
            where.problem(
                ("spec", "serverConfig"),
                f"container {RCLONE!r} removed: it copied artifacts for Seldon Core 2's agent, "
                "and gpuplace's agent fetches them itself"
                + (
                    f"; its mounts {', '.join(str(m.get('mountPath')) for m in moved)} "
                    "moved to the agent"
                    if moved
                    else ""
                ),
            )
        )
    if mounts:
        agent["volumeMounts"] = mounts
    drainer = _port(seldon, "SELDON_DRAINER_PORT", SELDON_DRAINER_PORT)
    hooks = _drop_hooks_on(pod, drainer)
    unused = mounted_before - _mounted(pod)
    volumes = pod.get("volumes") or []
    gone = [str(v.get("name")) for v in volumes if v.get("name") in unused]
    if gone:
        pod["volumes"] = [v for v in volumes if v.get("name") not in unused]
    kept = sorted(str(item.get("name")) for item in env)
    details = [
        f"kept its variables {', '.join(kept)}" if kept else "kept none of its variables",
        f"{' and '.join(SCHEDULER_ADDRESS)} name gpuplace's scheduler "
        f"({settings.scheduler_host}:{settings.scheduler_port})",
    ]
    if "resources" in agent:
        details.insert(1, "kept its resources")
    if gone:
        details.append(f"removed the volumes only Seldon's containers used: {', '.join(gone)}")
    if hooks:
        details.append(
            f"removed the preStop hooks that called Seldon's agent (port {drainer}) from "
            f"{', '.join(hooks)}"
        )
    if pod.get("serviceAccountName"):
        details.append(
            f"the pod runs as ServiceAccount {pod['serviceAccountName']!r}: it must exist"
        )
    warnings.insert(
        0,
        where.problem(
            ("spec", "serverConfig"),
            f"container {AGENT!r} (ServerConfig {resolved.config.name!r}) runs Seldon Core 2's "
            f"agent ({seldon.get('image') or 'no image'}): replaced by gpuplace's agent "
            f"({settings.agent_image}); " + "; ".join(details),
        ),
    )
    return warnings


def share_models_dir(
    resolved: ResolvedServer,
    pod: dict[str, Any],
    inference: dict[str, Any],
    agent: dict[str, Any],
    server: InferenceServer,
) -> str:
    """The folder the inference server loads models from, mounted into the agent too.

    The folder is the inference container's variable (`MLSERVER_MODELS_DIR`, ...), set to
    /mnt/models when absent. When no volume of the inference container holds it, an emptyDir
    is mounted there; the agent mounts the same volume at the same path.
    """
    entry = _env_value(inference, server.models_dir)
    if entry is None:
        _env(inference).append({"name": server.models_dir, "value": MODELS_PATH})
        folder = MODELS_PATH
    elif isinstance(entry.get("value"), str) and entry["value"].startswith("/"):
        folder = entry["value"].rstrip("/") or "/"
    else:
        raise ResourceError(
            [
                resolved.server.source.problem(
                    ("spec", "podSpec", "containers"),
                    f"container {inference['name']!r} of Server {resolved.name!r}: "
                    f"{server.models_dir} must be an absolute path given as `value` (the agent "
                    "writes the models into that folder)",
                )
            ]
        )
    holders = [
        mount
        for mount in inference.get("volumeMounts") or []
        if folder == str(mount.get("mountPath")).rstrip("/")
        or folder.startswith(str(mount.get("mountPath")).rstrip("/") + "/")
    ]
    if holders:
        holder = max(holders, key=lambda mount: len(str(mount.get("mountPath"))))
    else:
        holder = {"name": MODELS_VOLUME, "mountPath": folder}
        inference.setdefault("volumeMounts", []).append(holder)
        volumes: list[dict[str, Any]] = pod.setdefault("volumes", [])
        if not any(v.get("name") == MODELS_VOLUME for v in volumes):
            volumes.append({"name": MODELS_VOLUME, "emptyDir": {}})
    mounts: list[dict[str, Any]] = agent.setdefault("volumeMounts", [])
    if not any(m.get("mountPath") == holder.get("mountPath") for m in mounts):
        mounts.append(
            {key: holder[key] for key in ("name", "mountPath", "subPath") if key in holder}
        )
    return folder


def model_volume_paths(
    resolved: ResolvedServer, pod: dict[str, Any], agent: dict[str, Any], models_dir: str
) -> list[str]:
    """Where a local storageUri may read in the pod: the agent's mounts of persistent
    volumes (a PVC, a volumeClaimTemplate), as Seldon's k8s-pvc sample uses; never the
    model repository, a Secret or a ConfigMap."""
    claims = {
        volume["name"] for volume in pod.get("volumes") or [] if "persistentVolumeClaim" in volume
    } | {item["name"] for item in resolved.config.raw["spec"].get("volumeClaimTemplates") or []}
    return [
        mount["mountPath"]
        for mount in agent.get("volumeMounts") or []
        if mount.get("name") in claims
        and not models_dir.startswith(str(mount.get("mountPath", "")).rstrip("/") + "/")
        and mount.get("mountPath") != models_dir
    ]


def _uses_gpus(container: dict[str, Any]) -> bool:
    resources = container.get("resources") or {}
    return any(
        is_gpu_resource(str(name))
        for part in ("requests", "limits")
        for name in resources.get(part) or {}
    )


def _claims(container: dict[str, Any]) -> list[dict[str, Any]]:
    return list((container.get("resources") or {}).get("claims") or [])


def share_claims(inference: dict[str, Any], agent: dict[str, Any]) -> None:
    """A DRA pod: the agent references the inference container's resource claims, so it
    sees exactly the pod's GPUs, and needs no kubelet socket to tell them from others."""
    resources = agent.setdefault("resources", {})
    claims: list[dict[str, Any]] = resources.setdefault("claims", [])
    for claim in _claims(inference):
        if claim not in claims:
            claims.append(dict(claim))
    _set_default_env(agent, "GPUPLACE_AGENT_POD_RESOURCES_SOCKET", value="")
    _set_default_env(inference, "CUDA_DEVICE_ORDER", value="PCI_BUS_ID")


def give_agent_the_gpus(
    pod: dict[str, Any], inference: dict[str, Any], agent: dict[str, Any]
) -> None:
    """What the agent needs to measure the inference container's GPUs: the kubelet's
    PodResources socket (read-only), to learn which they are, and every device visible in
    its own container (NVIDIA_VISIBLE_DEVICES=all, which the NVIDIA container toolkit
    honours for containers that request no GPU: its default
    accept-nvidia-visible-devices-envvar-when-unprivileged). CUDA_DEVICE_ORDER=PCI_BUS_ID in
    the inference container makes CUDA's device numbers follow NVML's order."""
    _set_default_env(agent, "NVIDIA_VISIBLE_DEVICES", value="all")
    _set_default_env(inference, "CUDA_DEVICE_ORDER", value="PCI_BUS_ID")
    volumes: list[dict[str, Any]] = pod.setdefault("volumes", [])
    if not any(v.get("name") == POD_RESOURCES_VOLUME for v in volumes):
        volumes.append(
            {
                "name": POD_RESOURCES_VOLUME,
                "hostPath": {"path": POD_RESOURCES_PATH, "type": "Directory"},
            }
        )
    mounts: list[dict[str, Any]] = agent.setdefault("volumeMounts", [])
    if not any(m.get("name") == POD_RESOURCES_VOLUME for m in mounts):
        mounts.append(
            {"name": POD_RESOURCES_VOLUME, "mountPath": POD_RESOURCES_PATH, "readOnly": True}
        )


def mount_storage_secrets(
    pod: dict[str, Any], agent: dict[str, Any], secrets: Sequence[str]
) -> None:
    """Each Secret read-only at <storage secrets folder>/<name>/ in the agent."""
    if not secrets:
        return
    _set_default_env(agent, STORAGE_SECRETS_VARIABLE, value=STORAGE_SECRETS_PATH)
    entry = _env_value(agent, STORAGE_SECRETS_VARIABLE) or {}
    folder = str(entry.get("value") or STORAGE_SECRETS_PATH)
    volumes: list[dict[str, Any]] = pod.setdefault("volumes", [])
    mounts: list[dict[str, Any]] = agent.setdefault("volumeMounts", [])
    for index, name in enumerate(dict.fromkeys(secrets)):
        volume = STORAGE_SECRET_VOLUME.format(index=index)
        volumes.append({"name": volume, "secret": {"secretName": name}})
        mounts.append(
            {"name": volume, "mountPath": f"{folder.rstrip('/')}/{name}", "readOnly": True}
        )


def mount_tls(pod: dict[str, Any], agent: dict[str, Any], secret: str) -> None:
    """The TLS Secret read-only at TLS_PATH in the agent, and the agent told to use it."""
    if not secret:
        return
    pod.setdefault("volumes", []).append(
        {"name": TLS_VOLUME, "secret": {"secretName": secret, "defaultMode": 0o400}}
    )
    agent.setdefault("volumeMounts", []).append(
        {"name": TLS_VOLUME, "mountPath": TLS_PATH, "readOnly": True}
    )
    for setting, file in (("TLS_CA", "ca.crt"), ("TLS_CERT", "tls.crt"), ("TLS_KEY", "tls.key")):
        _set_default_env(agent, f"GPUPLACE_AGENT_{setting}", value=f"{TLS_PATH}/{file}")


def check_images(resolved: ResolvedServer, pod: dict[str, Any]) -> None:
    """Every container of the merged pod needs an image: name each one without."""
    problems = [
        resolved.server.source.problem(
            ("spec", "podSpec", key),
            f"{what} {container.get('name')!r} of Server {resolved.name!r} has no image: "
            f"neither the Server nor ServerConfig {resolved.config.name!r} sets `image` on it "
            f"(spec.podSpec.{key})",
        )
        for key, what in (("initContainers", "init container"), ("containers", "container"))
        for container in pod.get(key) or []
        if not container.get("image")
    ]
    if problems:
        raise ResourceError(problems)


def add_agent(
    resolved: ResolvedServer, settings: RenderSettings
) -> tuple[dict[str, Any], list[Problem]]:
    """The pod spec with the agent sidecar, its environment and the shared model folder."""
    pod = copy.deepcopy(resolved.pod_spec)
    containers: list[dict[str, Any]] = pod.setdefault("containers", [])
    inference = inference_container(resolved, containers, settings)
    server = INFERENCE_SERVERS.get(inference["name"], MLSERVER)
    warnings = replace_seldon_agent(resolved, pod, inference, settings)
    agent = next((c for c in containers if c.get("name") == AGENT), None)
    if agent is None:
        agent = {"name": AGENT}
        containers.append(agent)
    models_dir = share_models_dir(resolved, pod, inference, agent, server)
    if not agent.get("image"):
        agent["image"] = settings.agent_image
        agent.setdefault("command", ["gpuplace", "agent"])
        agent.setdefault("args", [f"--model-repository={models_dir}"])
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
        value=_port(inference, server.http_port, server.default_http_port),
    )
    _set_default_env(
        agent,
        "SELDON_SERVER_GRPC_PORT",
        value=_port(inference, server.grpc_port, server.default_grpc_port),
    )
    _set_default_env(
        agent,
        "GPUPLACE_AGENT_INFERENCE_METRICS_PORT",
        value=_port(inference, server.metrics_port, server.default_metrics_port)
        if server.metrics_port
        else "0",
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
    _set_default_env(
        agent, "POD_NAMESPACE", valueFrom={"fieldRef": {"fieldPath": "metadata.namespace"}}
    )
    _set_default_env(agent, "GPUPLACE_AGENT_INFERENCE_CONTAINER", value=inference["name"])
    if _claims(inference):
        share_claims(inference, agent)
    elif _uses_gpus(inference):
        give_agent_the_gpus(pod, inference, agent)
    mount_storage_secrets(pod, agent, settings.storage_secrets)
    mount_tls(pod, agent, settings.tls_secret)
    _set_default_env(
        agent,
        "GPUPLACE_AGENT_LOCAL_ARTIFACT_ROOTS",
        value=",".join(model_volume_paths(resolved, pod, agent, models_dir)),
    )
    for name, value in server.defaults:
        _set_default_env(inference, name, value=value)
    check_images(resolved, pod)

    requests = (inference.get("resources") or {}).get("requests") or {}
    if "memory" not in requests:
        warnings.append(
            resolved.server.source.problem(
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


def _metadata(
    name: str,
    namespace: str | None,
    labels: dict[str, str],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata


def _copied(*maps: Mapping[str, str] | None) -> dict[str, str]:
    """The maps merged in order (a later one wins), without the keys Seldon does not copy."""
    merged = {key: value for mapping in maps for key, value in (mapping or {}).items()}
    for key in NOT_COPIED:
        merged.pop(key, None)
    return merged


def server_metadata(
    resolved: ResolvedServer,
) -> tuple[dict[str, str], dict[str, str], list[Problem]]:
    """Labels and annotations for the StatefulSet and its pods, and warnings.

    The ServerConfig's, then the Server's (the Server wins), as Seldon Core 2 copies them;
    gpuplace's own labels win over both, and a warning names each one they replace.
    """
    config = resolved.config.obj.metadata
    server = resolved.server.obj.metadata
    labels = _copied(config.labels, server.labels)
    annotations = _copied(config.annotations, server.annotations)
    own = _labels(resolved.name)
    warnings = [
        resolved.server.source.problem(
            ("metadata", "labels"),
            f"label {key}={labels[key]} (Server {resolved.name!r} or ServerConfig "
            f"{resolved.config.name!r}) is replaced by gpuplace's {key}={value}: the "
            "StatefulSet's selector and the agents' ServiceMonitor rely on it",
        )
        for key, value in own.items()
        if key in labels and labels[key] != value
    ]
    return {**own, **labels, **own}, annotations, warnings


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
    labels, annotations, label_warnings = server_metadata(resolved)
    warnings.extend(label_warnings)
    agent = next(c for c in pod["containers"] if c.get("name") == AGENT)
    http_port = int(_port(agent, "SELDON_SERVER_HTTP_PORT", MLSERVER.default_http_port))
    grpc_port = int(_port(agent, "SELDON_SERVER_GRPC_PORT", MLSERVER.default_grpc_port))
    statefulset_spec: dict[str, Any] = {
        "replicas": 1 if spec.replicas is None else spec.replicas,
        "serviceName": name,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": _selector(name)},
        "template": {
            "metadata": {
                "labels": dict(labels),
                "annotations": {**annotations, SERVER_CONFIG_ANNOTATION: resolved.config.name},
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
        "metadata": _metadata(name, namespace, labels, annotations),
        "spec": statefulset_spec,
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, _labels(name)),
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
