"""Helpers for the API tests: a Server with limits/TLS/auth on its own loop thread, status details,
and self-signed certificates made with `cryptography`."""
from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cyserve.service.server import Server
from tests.service.support import LoopThread


@contextlib.contextmanager
def api_server(engine: Any, **kwargs: Any) -> Iterator[Server]:
    """A started Server on 127.0.0.1 (free port); kwargs go to Server (limits, credentials, ...)."""
    loop_thread = LoopThread()

    async def start() -> Server:
        server = Server(engine, "127.0.0.1", 0, **kwargs)
        await server.start()
        return server

    server = loop_thread.run(start())
    try:
        yield server
    finally:
        loop_thread.run(server.stop(1.0))
        loop_thread.close()


def details_of(exc: grpc.RpcError, kind: Any) -> list[Any]:
    """Every status detail of message type `kind` in the call's error."""
    status = rpc_status.from_call(exc)
    assert status is not None, f"no rich status in {exc!r}"
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def violation_fields(exc: grpc.RpcError) -> list[str]:
    return [v.field for b in details_of(exc, error_details_pb2.BadRequest) for v in b.field_violations]


def make_pki(tmp_path: Any) -> dict[str, bytes]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all PEM."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key() -> Any:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, pub: Any, issuer: str, signer: Any, ca: bool, san: list | None = None) -> Any:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(pub).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def pem_key(k: Any) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def pem(c: Any) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)

    ca_key, server_key, client_key = key(), key(), key()
    ca = cert("test-ca", ca_key.public_key(), "test-ca", ca_key, True)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = cert("localhost", server_key.public_key(), "test-ca", ca_key, False, san)
    client = cert("client", client_key.public_key(), "test-ca", ca_key, False)
    files = {"ca.pem": pem(ca), "server.pem": pem(server), "server.key": pem_key(server_key),
             "client.pem": pem(client), "client.key": pem_key(client_key)}
    for file_name, data in files.items():
        (tmp_path / file_name).write_bytes(data)
    return files
