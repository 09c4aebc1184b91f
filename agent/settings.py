"""Agent settings: flags override environment variables override defaults.

Seldon Core 2's environment variable names are honoured where one exists (POD_NAME,
MEMORY_REQUEST, SELDON_*); the others are GPUPLACE_AGENT_<FIELD>. Loaded once in main()
and passed in; nothing here reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.names import check_name, replica_id, split_pod_name
from contract.protocol import MAX_OVERCOMMIT_PERCENTAGE
from contract.quantity import parse_bytes
from contract.tls import ClientTls


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple):
        return [str(item).strip() for item in value if str(item).strip()]
    return value


class AgentSettings(BaseSettings):
    """Everything `gpuplace agent` can be told; each field is also a flag."""

    model_config = SettingsConfigDict(
        env_prefix="GPUPLACE_AGENT_", populate_by_name=True, extra="ignore"
    )

    capabilities: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias="SELDON_SERVER_CAPABILITIES",
        description="comma-separated capabilities of this server (items trimmed, empties dropped)",
    )
    memory_bytes: int = Field(
        0,
        ge=0,
        validation_alias="MEMORY_REQUEST",
        description="host memory the server offers to models, a quantity such as 8Gi",
    )
    overcommit_percentage: int = Field(
        10,
        ge=0,
        le=MAX_OVERCOMMIT_PERCENTAGE,
        validation_alias="SELDON_OVERCOMMIT_PERCENTAGE",
        description="how far past MEMORY_REQUEST the scheduler may place models, in percent",
    )
    pod_name: str = Field(
        "mlserver-0",
        validation_alias="POD_NAME",
        description="pod name: '<server>-<replica index>' (no ordinal = replica 0)",
    )
    scheduler_host: str = Field(
        "localhost",
        validation_alias="SELDON_SCHEDULER_HOST",
        description="host of the scheduler's agent API",
    )
    scheduler_port: int = Field(
        9005,
        ge=1,
        le=65535,
        validation_alias="SELDON_SCHEDULER_PORT",
        description="port of the scheduler's agent API",
    )
    inference_host: str = Field(
        "127.0.0.1", description="host of the inference server (MLServer) in this pod"
    )
    inference_http_port: int = Field(
        8080,
        ge=1,
        le=65535,
        validation_alias="SELDON_SERVER_HTTP_PORT",
        description="inference server REST port (the V2 model-repository API is used there)",
    )
    inference_grpc_port: int = Field(
        8081,
        ge=1,
        le=65535,
        validation_alias="SELDON_SERVER_GRPC_PORT",
        description="inference server gRPC port (logged at start; the agent itself uses REST)",
    )
    inference_metrics_port: int = Field(
        8082,
        ge=0,
        le=65535,
        description="inference server's Prometheus port (MLServer's MLSERVER_METRICS_PORT), "
        "read before and after each load to measure the host memory a model takes "
        "(0: not read, host memory is not learned)",
    )
    model_repository: Path = Field(
        Path("/mnt/agent/models"),
        description="model repository folder shared with the inference server; "
        "each model is copied into <folder>/<model name>/",
    )
    load_timeout_s: float = Field(
        600.0, gt=0, description="longest wait for the inference server to load one model"
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="longest wait for any other inference-server request"
    )
    fetch_timeout_s: float = Field(
        600.0,
        gt=0,
        description="longest time to fetch one artifact (an http(s) download, or the listing "
        "and download of an object-store artifact)",
    )
    fetch_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="object-store downloads that run at the same time for one artifact "
        "(files, and ranges of a large file)",
    )
    local_artifact_roots: Annotated[list[Path] | None, NoDecode] = Field(
        None,
        description="comma-separated folders a local storageUri may read (a pod's model "
        'volumes; "" = none); unset: anywhere but the system folders, the storage secrets '
        "and the model repository",
    )
    storage_secrets_dir: Path = Field(
        Path("/etc/gpuplace/storage-secrets"),
        description="folder where the storage secrets that models name in spec.secretName are "
        "mounted: <folder>/<secretName>/<key> holds one rclone remote config",
    )
    max_artifact_bytes: int = Field(
        50 * 2**30,
        gt=0,
        description="largest artifact (a quantity such as 50Gi): a download, a local copy, "
        "or the members of an archive together; a larger one fails to load",
    )
    resource_report_interval_s: float = Field(
        10.0, gt=0, description="how often GPU memory is read through NVML"
    )
    resource_report_threshold_bytes: int = Field(
        256 * 2**20,
        ge=0,
        description="a device's free memory must move by more than this (a quantity) "
        "before a resource update is sent",
    )
    gpu_uuids: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated GPU or MIG UUIDs this server may use (empty: the ones the "
        "kubelet assigned to the inference container, else every device)",
    )
    gpu_capabilities: bool = Field(
        False,
        description="add capabilities read from NVML to the advertised ones: gpu-<product>, "
        "gpu-mem-<GiB>gi, cuda-cc-<major>.<minor>, and mig for MIG instances (true/false)",
    )
    pod_resources_socket: str = Field(
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        description="the kubelet's PodResources socket, asked which GPUs the inference "
        'container was given ("" disables: every device NVML sees)',
    )
    pod_namespace: str = Field(
        "default",
        validation_alias="POD_NAMESPACE",
        description="this pod's namespace (downward API), to find it in the PodResources answer",
    )
    inference_container: str = Field(
        "mlserver",
        min_length=1,
        description="the pod's inference server container, whose nvidia.com/gpu devices are "
        "this server's GPUs",
    )
    max_concurrent_loads: int = Field(2, ge=1, description="loads that may run at the same time")
    drain_timeout_s: float = Field(
        90.0,
        gt=0,
        description="after SIGTERM, longest time until exit: at most 2/3 of it waiting for the "
        "scheduler to move this replica's models, the rest unloading; keep it below the pod's "
        "terminationGracePeriodSeconds",
    )
    reconnect_initial_s: float = Field(
        0.5, gt=0, description="first back-off before reconnecting to the scheduler"
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, description="longest back-off between reconnects to the scheduler"
    )
    tls_ca: Path | None = Field(
        None,
        description="CA (PEM) that signed the scheduler's certificate: connect with TLS and "
        "verify it",
    )
    tls_cert: Path | None = Field(
        None, description="this agent's certificate (PEM), for a scheduler that asks (mTLS)"
    )
    tls_key: Path | None = Field(None, description="this agent's private key (PEM)")
    tls_server_name: str = Field(
        "",
        description="the name the scheduler's certificate carries, when it is not "
        "SELDON_SCHEDULER_HOST",
    )
    http_host: str = Field("0.0.0.0", description="address the HTTP endpoints bind to")
    readiness_port: int = Field(
        9008, ge=0, le=65535, description="HTTP port for /ready and /live (0: any free)"
    )
    metrics_port: int = Field(
        9006, ge=0, le=65535, description="HTTP port for /metrics (0: any free)"
    )

    @field_validator("capabilities", "gpu_uuids", "local_artifact_roots", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator(
        "memory_bytes", "resource_report_threshold_bytes", "max_artifact_bytes", mode="before"
    )
    @classmethod
    def _quantity(cls, value: Any) -> Any:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return parse_bytes(value)
        return value

    @field_validator("pod_name")
    @classmethod
    def _pod_name(cls, value: str) -> str:
        server, _ = split_pod_name(value)
        check_name(server, "server name")
        return value

    @model_validator(mode="after")
    def _backoff(self) -> AgentSettings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be at least reconnect_initial_s")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("--tls-cert needs --tls-ca (the scheduler is verified first)")
        return self

    def client_tls(self) -> ClientTls | None:
        """TLS to the scheduler, when a CA to verify it is given."""
        if self.tls_ca is None:
            return None
        return ClientTls(self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name)

    @property
    def server(self) -> str:
        return split_pod_name(self.pod_name)[0]

    @property
    def index(self) -> int:
        return split_pod_name(self.pod_name)[1]

    @property
    def replica(self) -> str:
        """`<server>-<index>` (`mlserver-0`), as every log line names this replica: the
        scheduler's logs name replicas the same way."""
        return replica_id(self.server, self.index)

    @property
    def scheduler_address(self) -> str:
        return f"{self.scheduler_host}:{self.scheduler_port}"

    @property
    def inference_url(self) -> str:
        return f"http://{self.inference_host}:{self.inference_http_port}"

    @property
    def inference_metrics_url(self) -> str:
        """MLServer's Prometheus page; "" when `inference_metrics_port` is 0."""
        if not self.inference_metrics_port:
            return ""
        return f"http://{self.inference_host}:{self.inference_metrics_port}/metrics"
