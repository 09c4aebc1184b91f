"""gRPC credentials from the TLS settings (`contract.tls`), for the scheduler's servers and
for the channels the agent, the CLI and the test harness open."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from contract.tls import ClientTls, ServerTls, TlsError, read_pem


def _check(cert: Path | None, key: Path | None, ca: Path | None) -> None:
    """Load the files as TLS will, so that a bad one is named now (gRPC only says it cannot
    bind, or that the handshake failed, and logs lines of its own)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if cert is not None and key is not None:
            context.load_cert_chain(cert, key)
        if ca is not None:
            context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        files = ", ".join(str(path) for path in (cert, key, ca) if path is not None)
        raise TlsError(f"{files}: not a usable certificate, key or CA ({exc})") from None


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    _check(tls.cert, tls.key, tls.client_ca)
    return grpc.ssl_server_credentials(
        [(read_pem(tls.key, "--tls-key"), read_pem(tls.cert, "--tls-cert"))],
        root_certificates=read_pem(tls.client_ca, "--tls-client-ca") if tls.client_ca else None,
        require_client_auth=tls.client_ca is not None,
    )


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    if (tls.cert is None) != (tls.key is None):
        raise TlsError("a client certificate needs its key, and a key its certificate")
    _check(tls.cert, tls.key, tls.ca)
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls.ca, "--tls-ca"),
        private_key=read_pem(tls.key, "--tls-key") if tls.key else None,
        certificate_chain=read_pem(tls.cert, "--tls-cert") if tls.cert else None,
    )
