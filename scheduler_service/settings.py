"""Scheduler settings: flags override environment variables override defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.tls import ServerTls
from placement.types import Policy


class SchedulerSettings(BaseSettings):
    """Loaded once in main() and passed in; nothing reads the environment elsewhere."""

    model_config = SettingsConfigDict(env_prefix="GPUPLACE_SCHEDULER_", extra="forbid")

    host: str = Field("0.0.0.0", description="address every listener binds to")
    port: int = Field(9004, ge=0, le=65535, description="client API gRPC port (0: any free)")
    agent_port: int = Field(9005, ge=0, le=65535, description="agent API gRPC port (0: any free)")
    http_port: int = Field(
        9999, ge=0, le=65535, description="HTTP port for /live, /ready and /metrics (0: any free)"
    )
    db: Path = Field(Path("gpuplace-state.db"), description="SQLite state file")
    db_synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="when SQLite syncs the state file to disk: normal (at checkpoints: a "
        "process crash loses nothing, a power loss or node crash may lose the last changes) "
        "or full (at every commit: nothing answered is lost even then; each pass waits for "
        "the disk)",
    )
    policy: Policy = Field(Policy.BINPACK, description="placement policy: binpack or spread")
    load_timeout_s: float = Field(
        300.0, gt=0, description="a load not finished by then fails and is retried elsewhere"
    )
    disconnect_grace_s: float = Field(
        30.0, ge=0, description="how long a disconnected agent's models wait before moving"
    )
    exclusion_s: float = Field(
        300.0, ge=0, description="how long a replica that failed a model version is skipped"
    )
    retry_initial_s: float = Field(
        1.0, gt=0, description="first back-off before a refused model is placed again"
    )
    retry_max_s: float = Field(60.0, gt=0, description="longest back-off between retries")
    drain_timeout_s: float = Field(
        55.0,
        gt=0,
        description="how long the models of a draining agent may take to move before it is "
        "told to go (below the agent's own wait: 2/3 of its 90 s drain timeout)",
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="largest gRPC message accepted or sent"
    )
    agent_queue_size: int = Field(
        1024, ge=1, description="commands queued for one agent before it is disconnected as slow"
    )
    watch_queue_size: int = Field(
        1024, ge=1, description="updates queued for one watcher before it is dropped as slow"
    )
    max_models: int = Field(10000, ge=1, description="most models the scheduler accepts")
    learned_margin_percent: int = Field(
        10,
        ge=0,
        le=1000,
        description="a model that declares no gpuMemory or no memory is placed, once a load of "
        "its artifact was measured, with the largest measured figure plus this many percent",
    )
    tls_cert: Path | None = Field(
        None, description="server certificate (PEM) for both gRPC ports; with --tls-key: TLS"
    )
    tls_key: Path | None = Field(None, description="the server certificate's private key (PEM)")
    tls_client_ca: Path | None = Field(
        None,
        description="CA (PEM) whose certificates clients must present on both gRPC ports "
        "(mutual TLS: agents and the CLI); needs --tls-cert",
    )
    tls_agent_ca: Path | None = Field(
        None,
        description="CA (PEM) whose certificates agents must present on the agent port, in "
        "place of --tls-client-ca there: with a CA of their own, a CLI user's certificate "
        "cannot say hello as an agent; needs --tls-cert",
    )
    client_token_file: Path | None = Field(
        None,
        description="file holding the bearer token every client API call must carry "
        "(authorization: Bearer ...); health checks are exempt",
    )

    @model_validator(mode="after")
    def _tls_pairs(self) -> SchedulerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if (self.tls_client_ca or self.tls_agent_ca) is not None and self.tls_cert is None:
            raise ValueError("a client CA needs --tls-cert and --tls-key (mutual TLS)")
        return self

    def server_tls(self, agents: bool = False) -> ServerTls | None:
        """TLS for the client port, or (`agents`) for the agent port."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        ca = (self.tls_agent_ca or self.tls_client_ca) if agents else self.tls_client_ca
        return ServerTls(self.tls_cert, self.tls_key, ca)
