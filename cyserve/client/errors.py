"""A failed call as one exception: its status, the google.rpc details the server packed in it
(BadRequest field violations, RetryInfo, ErrorInfo), whether sending it again may succeed, and a
message that says what the caller should change."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Words gRPC puts in an UNAVAILABLE status when the connection failed in its TLS handshake.
_TLS_WORDS = ("ssl", "tls", "handshake", "certificate")

# How hints name the options a caller should change (the `cyserve` command passes its flags).
OPTION_NAMES = {
    "token": "token= (env CYSERVE_TOKEN)",
    "tls_ca": "tls_ca= (env CYSERVE_TLS_CA)",
    "client_cert": "a client certificate and key, tls_cert= and tls_key= (env CYSERVE_CLIENT_CERT, CYSERVE_CLIENT_KEY)",
    "server": "the server",
}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: `field` is its path in the .proto's names ("sampling.top_p")."""

    field: str
    description: str


class CallError(Exception):
    """A call that ended with a status other than OK.

    `retryable` is True for UNAVAILABLE (the server is starting, draining or unreachable) and for
    RESOURCE_EXHAUSTED that carries RetryInfo (the queue was full); never for a failed TLS
    handshake, a refused token or a bad request, which fail the same way every time."""

    def __init__(self, code: grpc.StatusCode, details: str, *, violations: tuple[FieldViolation, ...] = (),
                 retry_delay_s: float | None = None, reason: str | None = None,
                 error_metadata: dict[str, str] | None = None, address: str = "", tls: bool = False,
                 client_cert: bool = False) -> None:
        self.code = code
        self.details = details
        self.violations = violations
        self.retry_delay_s = retry_delay_s
        self.reason = reason
        self.error_metadata = dict(error_metadata or {})
        self.address = address
        self.tls = tls  # the channel used TLS
        self.client_cert = client_cert  # ... and presented a client certificate
        super().__init__(self.describe())

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError, address: str = "", tls: bool = False,
                       client_cert: bool = False) -> CallError:
        """Reads the status and details of a failed call (a grpc.Call that raised)."""
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = (exc.details() if hasattr(exc, "details") else None) or ""
        violations: list[FieldViolation] = []
        retry_delay_s = reason = None
        error_metadata: dict[str, str] = {}
        status = rpc_status.from_call(exc) if hasattr(exc, "trailing_metadata") else None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay_s = retry.retry_delay.ToTimedelta().total_seconds()
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, error_metadata = info.reason, dict(info.metadata)
        return cls(code, details, violations=tuple(violations), retry_delay_s=retry_delay_s, reason=reason,
                   error_metadata=error_metadata, address=address, tls=tls, client_cert=client_cert)

    @property
    def tls_failed(self) -> bool:
        """The connection failed in its TLS handshake (wrong CA, name, or a missing client certificate)."""
        if self.code is not grpc.StatusCode.UNAVAILABLE:
            return False
        text = self.details.lower()
        return any(word in text for word in _TLS_WORDS)

    @property
    def retryable(self) -> bool:
        if self.code is grpc.StatusCode.UNAVAILABLE:
            return not self.tls_failed
        return self.code is grpc.StatusCode.RESOURCE_EXHAUSTED and self.retry_delay_s is not None

    def hint(self, names: Mapping[str, str] | None = None) -> str:
        """What the caller should change, or "" when the status says it all. `names` renames the
        options the hint points to (keys of OPTION_NAMES), e.g. to a command's flags."""
        name = {**OPTION_NAMES, **(names or {})}
        if self.code is grpc.StatusCode.UNAUTHENTICATED:
            return (f"the server refused the call's bearer token (none or a wrong one): give the server's token "
                    f"with {name['token']}")
        if self.tls_failed:
            return (f"the TLS handshake failed: {name['tls_ca']} must be the CA that signed the server's "
                    "certificate and the address a name in that certificate; a server with mutual TLS also "
                    f"needs {name['client_cert']} signed by its client CA")
        if self.code is grpc.StatusCode.UNAVAILABLE:
            where = f" at {self.address}" if self.address else ""
            running = f"is {name['server']} running{where}"
            if not self.tls:
                return f"{running} (or serving TLS, which needs {name['tls_ca']})?"
            if not self.client_cert:
                return (f"{running}? A server with mutual TLS also closes the connection of a client without "
                        f"a certificate: give {name['client_cert']}")
            return f"{running}?"
        return ""

    def describe(self, names: Mapping[str, str] | None = None) -> str:
        """The status, its details, one line per bad field, and the hint (see `hint`)."""
        lines = [f"{self.code.name}: {self.details}" if self.details else self.code.name]
        lines += [f"  {v.field}: {v.description}" for v in self.violations]
        if self.reason:
            lines[0] += f" [{self.reason}]"
        if self.retry_delay_s is not None:
            lines[0] += f" (retry after {self.retry_delay_s:g} s)"
        hint = self.hint(names)
        if hint:
            lines[0] += f"; {hint}"
        return "\n".join(lines)
