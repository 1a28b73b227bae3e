"""Helpers for the API tests: self-signed certificates made with `cryptography` (servers, stubs
and status details are in tests/server_support.py)."""
from __future__ import annotations

import datetime
from typing import Any


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
