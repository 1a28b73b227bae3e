"""TLS for the gRPC port: server credentials from PEM files, with mutual TLS when a client CA is
given (then every client must present a certificate that CA signed)."""
from __future__ import annotations

import grpc


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
