"""TLS from PEM files, for the gRPC port (`server_credentials`) and the metrics port
(`metrics_ssl_context`): the same certificate and key for both, and mutual TLS when a client CA is
given (then every client, scraper included, must present a certificate that CA signed)."""
from __future__ import annotations

import ssl
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the server's PEM files; `client_ca` None = no client certificates asked for."""

    cert: str
    key: str
    client_ca: str | None = None


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {path!r}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the TLS {what} {path!r} is not PEM")
    return data


def server_credentials(cert_path: str, key_path: str, client_ca_path: str | None = None) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`. Raises ValueError on an unreadable or non-PEM file."""
    cert = _read(cert_path, "certificate")
    key = _read(key_path, "key")
    client_ca = _read(client_ca_path, "client CA") if client_ca_path else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def metrics_ssl_context(files: TLSFiles) -> ssl.SSLContext:
    """An HTTPS server context for /metrics with the gRPC port's certificate, key and client CA.
    Raises ValueError on an unreadable or unusable file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
        if files.client_ca:
            context.load_verify_locations(files.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"metrics TLS: {exc}") from None
    return context
