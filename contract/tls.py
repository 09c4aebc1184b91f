"""TLS for the two gRPC APIs, as settings: the scheduler's certificate (and the CA its
clients' must come from, for mutual TLS), and what the agent and the CLI trust and show.
Files are PEM, as cert-manager writes them into a Secret (tls.crt, tls.key, ca.crt).
`contract.grpc_tls` makes gRPC credentials of them; this module stays free of gRPC (the
settings import it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class TlsError(ValueError):
    """A certificate or key file that cannot be used: names the setting and the file."""


def read_pem(path: Path, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{setting} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{setting} {path}: not a PEM file (no -----BEGIN line)")
    return data


@dataclass(frozen=True)
class ServerTls:
    """The scheduler's certificate and key; with `client_ca`, clients must present a
    certificate it signed (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class ClientTls:
    """What a client (the agent, the CLI) trusts and shows: the CA that signed the
    scheduler's certificate, and its own certificate and key when the scheduler asks for
    one (mutual TLS). `server_name`: the name the scheduler's certificate must carry, when
    it is not the host connected to (an IP address, a port-forward)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
