"""gRPC credentials from the TLS settings (`contract.tls`), for the scheduler's servers and
for the channels the agent, the CLI and the test harness open."""

from __future__ import annotations

import grpc

from contract.tls import ClientTls, ServerTls, TlsError, read_pem


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(read_pem(tls.key, "--tls-key"), read_pem(tls.cert, "--tls-cert"))],
        root_certificates=read_pem(tls.client_ca, "--tls-client-ca") if tls.client_ca else None,
        require_client_auth=tls.client_ca is not None,
    )


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    if (tls.cert is None) != (tls.key is None):
        raise TlsError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls.ca, "--tls-ca"),
        private_key=read_pem(tls.key, "--tls-key") if tls.key else None,
        certificate_chain=read_pem(tls.cert, "--tls-cert") if tls.cert else None,
    )
