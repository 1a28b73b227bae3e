"""uvicorn embedded in a running event loop: the HTTP port beside grpc.aio, on the same loop, with
the gRPC port's TLS files (and client CA for mutual TLS). The socket is bound here, so a port in
use is a clear error at start and port 0 reports the port it got; signals stay with the caller
(cyserve.service.server.serve), which drains both protocols together.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from cyserve.service.tls import TLSFiles

KEEP_ALIVE_S = 75  # above the 60 s idle timeout of common load balancers, so they close first


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the gRPC server's handlers stay in charge
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when host is); raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT: never share
        sock.bind((host.strip("[]"), port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """One uvicorn server for `app` on host:port; start() binds and serves, stop() drains."""

    def __init__(self, app: ASGIApp, host: str, port: int, tls: TLSFiles | None = None,
                 shutdown_timeout_s: float = 2.0) -> None:
        self.host = host
        self.port = port  # the bound port once started
        self.tls = tls
        kwargs = {}
        if tls is not None:
            kwargs = {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
            if tls.client_ca:
                kwargs.update(ssl_ca_certs=tls.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
        self._config = uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, server_header=False,
            http="h11", ws="none", timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=shutdown_timeout_s, **kwargs)
        self._server: _EmbeddedServer | None = None
        self._socket: socket.socket | None = None
        self._task: asyncio.Task | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    async def start(self) -> int:
        """Bind and serve; returns the bound port. Raises OSError (address) or ValueError (TLS)."""
        sock = bind_socket(self.host, self.port)
        try:
            self._config.load()  # builds the SSL context: bad TLS files fail here
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise ValueError(f"HTTP TLS: {exc}") from None
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._server = _EmbeddedServer(self._config)
        self._server.lifespan = self._config.lifespan_class(self._config)
        await self._server.startup(sockets=[sock])
        self._task = asyncio.ensure_future(self._server.main_loop())
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let responses in progress end (up to the shutdown timeout), close."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        self._server = self._task = None
        server.should_exit = True
        await task
        await server.shutdown(sockets=[self._socket] if self._socket is not None else None)
