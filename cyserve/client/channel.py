"""How a client reaches a server: the address, TLS (a CA, a client certificate for mutual TLS, a
name override) and a bearer token, from arguments or environment variables; `open_channel` turns
them into a grpc.Channel whose every call carries the token."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"

# Variables the client side reads. The server's own (CYSERVE_TLS_CERT, CYSERVE_AUTH_TOKEN, ...) are
# different names: a client and a server may run with one environment.
ENV_VARS = {
    "address": "CYSERVE_ADDRESS",
    "tls_ca": "CYSERVE_TLS_CA",
    "tls_cert": "CYSERVE_CLIENT_CERT",
    "tls_key": "CYSERVE_CLIENT_KEY",
    "token": "CYSERVE_TOKEN",
}


@dataclass(frozen=True)
class ChannelOptions:
    """Where the server is and how to authenticate to it.

    tls_ca: PEM file of the CA that signed the server's certificate; setting it turns TLS on.
    tls: TLS with the system's root certificates (implied by tls_ca).
    tls_cert, tls_key: the client's PEM certificate and key, for a server with mutual TLS.
    server_name: the name to check the server's certificate against, when the address is not in it.
    token: sent as `authorization: Bearer <token>` on every call.
    """

    address: str = DEFAULT_ADDRESS
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls: bool = False
    server_name: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("the server address is empty: give host:port")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("a client certificate needs its key and a key its certificate: give both tls_cert "
                             "and tls_key, or neither")
        if self.tls_cert and not self.uses_tls:
            raise ValueError("a client certificate is for TLS: give tls_ca (the CA of the server's certificate) "
                             "or tls=True too")
        if self.server_name and not self.uses_tls:
            raise ValueError("server_name is for TLS: give tls_ca or tls=True too")
        if self.token is not None and not self.token.strip():
            raise ValueError("the token is empty: give the server's token or none")

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.tls_ca)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ChannelOptions:
        """Options from CYSERVE_ADDRESS, CYSERVE_TLS_CA, CYSERVE_CLIENT_CERT, CYSERVE_CLIENT_KEY and
        CYSERVE_TOKEN; an override that is not None wins over its variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {name: env[var] for name, var in ENV_VARS.items() if env.get(var)}
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file. Raises ValueError naming the file when it is unreadable or not PEM."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path!r}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the {what} {path!r} is not a PEM file")
    return data


def channel_credentials(options: ChannelOptions) -> grpc.ChannelCredentials:
    """TLS credentials from the options' PEM files. Raises ValueError for an unusable file."""
    root = read_pem(options.tls_ca, "TLS CA file") if options.tls_ca else None
    key = read_pem(options.tls_key, "client key file") if options.tls_key else None
    cert = read_pem(options.tls_cert, "client certificate file") if options.tls_cert else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)


def open_channel(options: ChannelOptions, extra_options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A channel to options.address: TLS when the options ask for it, and the bearer token added to
    every call's metadata (over TLS or, for a server on the same host, plaintext)."""
    channel_options = list(extra_options or [])
    if options.server_name:
        channel_options.append(("grpc.ssl_target_name_override", options.server_name))
    if options.uses_tls:
        channel = grpc.secure_channel(options.address, channel_credentials(options), options=channel_options)
    else:
        channel = grpc.insecure_channel(options.address, options=channel_options)
    if options.token:
        channel = grpc.intercept_channel(channel, BearerToken(options.token))
    return channel


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to the metadata of every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token.strip()}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [item for item in (details.metadata or ()) if item[0] != "authorization"]
        return _CallDetails(details.method, details.timeout, [*metadata, self._header], details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method: str, timeout: float | None, metadata: list[tuple[str, str]], credentials: Any,
                 wait_for_ready: bool | None, compression: Any) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression
