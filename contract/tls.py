"""TLS for the two gRPC APIs: the scheduler's server credentials (mutual TLS when a client
CA is given), and the credentials the agent and the CLI connect with. Files are PEM, as
cert-manager writes them into a Secret (tls.crt, tls.key, ca.crt)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when credentials are made: settings stay free of gRPC
    import grpc


class TlsError(ValueError):
    """A certificate or key file that cannot be used: names the setting and the file."""


def _read(path: Path, setting: str) -> bytes:
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

    def credentials(self) -> grpc.ServerCredentials:
        import grpc

        return grpc.ssl_server_credentials(
            [(_read(self.key, "--tls-key"), _read(self.cert, "--tls-cert"))],
            root_certificates=(
                _read(self.client_ca, "--tls-client-ca") if self.client_ca else None
            ),
            require_client_auth=self.client_ca is not None,
        )


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

    def credentials(self) -> grpc.ChannelCredentials:
        import grpc

        if (self.cert is None) != (self.key is None):
            raise TlsError("a client certificate needs its key, and a key its certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "--tls-ca"),
            private_key=_read(self.key, "--tls-key") if self.key else None,
            certificate_chain=_read(self.cert, "--tls-cert") if self.cert else None,
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
