"""The grpc.aio server: the Generation service plus grpc.health.v1 and server reflection, and
`serve()`, which runs one until SIGTERM/SIGINT and shuts it down gracefully.
"""
from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cyserve.service.config import ServerConfig
from cyserve.service.errors import ErrorMappingInterceptor
from cyserve.service.servicer import GenerationServicer
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

log = structlog.get_logger("cyserve.service")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Generation"].full_name  # "cyserve.v1.Generation"
HEALTH_SERVICES = ("", SERVICE_NAME)  # "" = the server as a whole
SERVER_OPTIONS = [
    # Never share a port with another process silently (gRPC's Linux default is SO_REUSEPORT on).
    ("grpc.so_reuseport", 0),
]
NUM_CPU_WORKERS = 2  # threads for chat rendering and tokenizing


class ServeError(Exception):
    """The server cannot start (e.g. its address cannot be bound)."""


class Server:
    """One grpc.aio server around a started engine. Create and use it inside the event loop."""

    def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.engine = engine
        self.host = host
        self.port = port  # the bound port once started
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> int:
        """Bind, start, and report SERVING; returns the bound port. Raises ServeError."""
        for service in HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._executor = ThreadPoolExecutor(NUM_CPU_WORKERS, thread_name_prefix="cyserve-cpu")
        server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()], options=SERVER_OPTIONS)
        pb_grpc.add_GenerationServicer_to_server(
            GenerationServicer(self.engine, self._executor), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = self.address
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ServeError(f"cannot listen on {address}: {exc}") from exc
        if port == 0:
            raise ServeError(f"cannot listen on {address}")
        self.port = port
        self._server = server
        await server.start()
        for service in HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return port

    async def stop(self, grace: float | None) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish within `grace` seconds,
        then cancel the rest (which aborts their requests in the engine)."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


async def serve(config: ServerConfig) -> None:
    """Load the model, serve until SIGTERM or SIGINT, shut down gracefully, return.

    Raises ModelLoadError (model unusable) or ServeError (address unusable) before serving.
    """
    from cyserve.fastpath.engine import Engine

    engine_config = config.engine_config()
    engine = await asyncio.to_thread(Engine.from_config, engine_config)
    engine.start()
    server = Server(engine, config.host, config.port)
    with _SignalWaiter(signal.SIGTERM, signal.SIGINT) as signals:
        try:
            await server.start()
            info = engine.model_info
            log.info(
                "server.started",
                address=server.address,
                port=server.port,
                model=info.name,
                model_path=engine_config.model_path,
                quantization=str(getattr(info.quantization, "name", info.quantization)),
                **_engine_stats(engine),
            )
            received = await signals.first
            log.info("server.stopping", signal=received.name, grace_s=config.grace_s)
            await server.stop(config.grace_s)
        finally:
            await server.stop(0)  # no-op after a graceful stop; cleans up after a failed start
            await asyncio.to_thread(engine.stop)
    log.info("server.stopped")


class _SignalWaiter:
    """Handles `signals` while in use: `first` resolves on the first; later ones are logged only
    (so a second Ctrl-C during the grace period does not kill the process mid-shutdown)."""

    def __init__(self, *signals: signal.Signals) -> None:
        self.signals = signals
        self.loop = asyncio.get_running_loop()
        self.first: asyncio.Future[signal.Signals] = self.loop.create_future()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.first.done():
            log.info("server.already_stopping", signal=sig.name)
        else:
            self.first.set_result(sig)

    def __enter__(self) -> _SignalWaiter:
        for sig in self.signals:
            self.loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig in self.signals:
            self.loop.remove_signal_handler(sig)


def _engine_stats(engine: Any) -> dict[str, Any]:
    try:
        stats = engine.stats()
    except Exception:  # stats are informative only
        return {}
    return {
        "num_kv_blocks": getattr(stats, "num_total_blocks", None),
        "num_free_kv_blocks": getattr(stats, "num_free_blocks", None),
    }
