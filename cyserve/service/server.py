"""The grpc.aio server: the Generation service plus grpc.health.v1 and server reflection, its
telemetry (spans, the Prometheus endpoint on a port of its own), an optional plaintext port that
serves grpc.health.v1 alone (for probes that cannot speak TLS), the OpenAI-compatible HTTP API on
the same event loop and engine (cyserve.service.http), and `serve()`, which runs one until
SIGTERM/SIGINT and shuts it down gracefully.

The port is bound before the model loads: until then health says NOT_SERVING and every Generation
call gets UNAVAILABLE with RetryInfo (cyserve.service.readiness), so orchestrators and clients see
a server that is starting, not one that is absent.
"""
from __future__ import annotations

import asyncio
import importlib.metadata
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cyserve.fastpath.contract import EngineClient
from cyserve.service.config import ServerConfig
from cyserve.service.auth import BearerTokenInterceptor
from cyserve.service.errors import ErrorMappingInterceptor
from cyserve.service.http.app import OpenAIApi
from cyserve.service.http.server import HttpServer
from cyserve.service.limits import ServiceLimits, connection_age_options, grpc_options
from cyserve.service.observability.metrics import MetricsHTTPServer, ServiceMetrics
from cyserve.service.readiness import ReadinessInterceptor
from cyserve.service.servicer import GenerationServicer
from cyserve.service.tls import TLSFiles, metrics_ssl_context
from cyserve.service.observability.telemetry import Telemetry
from cyserve.service.observability.tracing import configure_tracing
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
FINAL_MESSAGE_S = 2.0  # after the grace period: time for the last messages to be sent
DRAIN_POLL_S = 0.05


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _until(done: Callable[[], bool], timeout: float) -> None:
    """Return once done() holds, or after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not done() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(DRAIN_POLL_S)


class ServeError(Exception):
    """The server cannot start (e.g. its address cannot be bound)."""


class Server:
    """One grpc.aio server around a started engine, or one still to come (None: `start()` serves
    NOT_SERVING / UNAVAILABLE until `load()` or `attach()`). Create and use it inside the event loop."""

    def __init__(self, engine: EngineClient | None, host: str = "127.0.0.1", port: int = 0, *,
                 tracer_provider: Any | None = None, metrics_port: int | None = None,
                 trace_content: bool = False, limits: ServiceLimits | None = None,
                 credentials: grpc.ServerCredentials | None = None,
                 auth_token: str | None = None, health_port: int | None = None,
                 metrics_tls: TLSFiles | None = None, http_port: int | None = None,
                 http_tls: TLSFiles | None = None, served_model_name: str | None = None,
                 max_connection_age_s: float = 0.0,
                 max_connection_age_grace_s: float = 0.0) -> None:
        """`tracer_provider` None = no spans; `metrics_port` None = no metrics, 0 = any free
        port (the bound one is in `metrics_port` once started); `trace_content` puts prompt and
        output text in spans. `health_port` (None = none, 0 = any free port) is a plaintext port
        on the same host serving only grpc.health.v1, with the main port's statuses and no
        token asked for; `metrics_tls` serves the metrics over HTTPS with those files.
        `http_port` (None = none, 0 = any free port) serves the OpenAI-compatible API, over
        HTTPS with `http_tls`, with the same token, naming the model `served_model_name` (None:
        the model's own name). `max_connection_age_s` (0 = unlimited) closes
        gRPC connections that old (after `max_connection_age_grace_s` for calls in flight), so
        that clients reconnect and spread over new replicas."""
        self.engine = engine
        self.host = host
        self.port = port  # the bound port once started
        self.metrics_port = metrics_port
        self.health_port = health_port  # the bound port once started
        self._metrics_tls = metrics_tls
        self._health_server: grpc.aio.Server | None = None
        self.telemetry = Telemetry(tracer_provider, None, trace_content,
                                   _model_name(engine) if engine is not None else "")
        self._metrics_http: MetricsHTTPServer | None = None
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopped = False
        self.limits = limits or ServiceLimits()
        self._credentials = credentials  # None = plaintext
        self._auth_token = auth_token  # None = no authentication; never logged
        self._servicer: GenerationServicer | None = None
        self.http_port = http_port  # the bound port once started
        self._http_tls = http_tls
        self._served_model_name = served_model_name
        self._http: HttpServer | None = None
        self._connection_age = (max_connection_age_s, max_connection_age_grace_s)

    @property
    def address(self) -> str:
        return _join(self.host, self.port)

    @property
    def health_address(self) -> str | None:
        return None if self.health_port is None else _join(self.host, self.health_port)

    async def start(self) -> int:
        """Bind and start; returns the bound port. SERVING at once when the server has its engine,
        else NOT_SERVING until `load()`/`attach()`. Raises ServeError."""
        for service in HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._executor = ThreadPoolExecutor(NUM_CPU_WORKERS, thread_name_prefix="cyserve-cpu")
        self._servicer = GenerationServicer(
            None, self._executor, self.telemetry, self.limits,
            tls=self._credentials is not None, auth_required=bool(self._auth_token),
        )
        servicer = self._servicer
        # Telemetry first (outermost), so that it sees the status the error mapping chose; the
        # readiness gate inside the error mapping, which turns its refusal into a status.
        interceptors = [self.telemetry.interceptor(), ErrorMappingInterceptor(),
                        ReadinessInterceptor(lambda: servicer.ready)]
        if self._auth_token:
            interceptors.insert(1, BearerTokenInterceptor(self._auth_token))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=SERVER_OPTIONS + grpc_options(self.limits) + connection_age_options(*self._connection_age),
        )
        pb_grpc.add_GenerationServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        self.port = port = _bind(server, self.address, self._credentials)
        self._server = server
        await server.start()
        await self._start_health_port()
        await self._start_http()
        if self.engine is not None:
            await self.attach(self.engine)
        return port

    async def _start_health_port(self) -> None:
        """The plaintext probe port: grpc.health.v1 and nothing else (no Generation, no
        reflection, no interceptors: the kubelet sends no token). It shares the main port's
        HealthServicer, so it says NOT_SERVING while loading and draining, as that one does."""
        if self.health_port is None:
            return
        server = grpc.aio.server(options=SERVER_OPTIONS + grpc_options(self.limits))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.health_port = _bind(server, _join(self.host, self.health_port), None, " (health port)")
        self._health_server = server
        await server.start()

    async def _start_http(self) -> None:
        """The OpenAI-compatible API on its port, around the same servicer and telemetry."""
        if self.http_port is None:
            return
        api = OpenAIApi(self._servicer, self.telemetry, self._auth_token, self._served_model_name)
        http = HttpServer(api.app(), self.host, self.http_port, self._http_tls, FINAL_MESSAGE_S)
        try:
            self.http_port = await http.start()
        except (OSError, ValueError) as exc:
            raise ServeError(f"cannot serve HTTP on {_join(self.host, self.http_port)}: {exc}") from exc
        self._http = http

    @property
    def http_address(self) -> str | None:
        return None if self._http is None else f"{self._http.scheme}://{_join(self.host, self.http_port)}"

    async def load(self, loader: Callable[[], EngineClient]) -> EngineClient:
        """Run `loader` (returns a started engine; may block for long) in a worker thread, then
        attach its engine. Its exceptions (e.g. ModelLoadError) propagate; the server stays
        NOT_SERVING then."""
        engine = await asyncio.to_thread(loader)
        await self.attach(engine)
        return engine

    async def attach(self, engine: EngineClient) -> None:
        """Serve `engine` (started): metrics on, Generation calls answered, health SERVING.
        Raises ServeError when the metrics port cannot be bound. A stopping server stays down."""
        if self._servicer is None:
            raise RuntimeError("start() the server before attaching an engine")
        if self._stopped:
            return
        self.engine = engine
        self.telemetry.model_name = _model_name(engine)
        self._start_metrics()
        self._servicer.attach(engine)
        for service in HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Drain, then stop. Health says NOT_SERVING at once and new generation calls get
        UNAVAILABLE with RetryInfo, while the port keeps listening; calls in flight run on for up
        to `grace` seconds (None or 0: none). Then every completion still running ends with a
        last message (FINISH_REASON_CANCELLED, `error` saying why), and the server closes."""
        if self._stopped:
            return
        self._stopped = True
        servicer = self._servicer
        if servicer is not None:
            servicer.draining = True  # new generation calls: UNAVAILABLE
        await self.health.enter_graceful_shutdown()
        if servicer is not None:
            if grace:
                await _until(lambda: servicer.num_active == 0, grace)
            servicer.finish_all()
            await _until(lambda: servicer.num_active == 0, FINAL_MESSAGE_S)
        if self._http is not None:  # stops accepting; ends responses still being sent
            await self._http.stop()
            self._http = None
        if self._server is not None:
            await self._server.stop(FINAL_MESSAGE_S if grace else 0)  # cancels what is left
        if self._health_server is not None:  # probes saw NOT_SERVING for the whole drain
            await self._health_server.stop(0)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._stop_metrics()

    def _start_metrics(self) -> None:
        if self.metrics_port is None or self._metrics_http is not None:
            return
        metrics = ServiceMetrics(self.telemetry.model_name, self.engine.model_info.max_model_len, self.engine)
        try:
            context = metrics_ssl_context(self._metrics_tls) if self._metrics_tls is not None else None
            self._metrics_http = MetricsHTTPServer(metrics.registry, self.host, self.metrics_port, context)
        except (OSError, ValueError) as exc:
            raise ServeError(f"cannot serve metrics on port {self.metrics_port}: {exc}") from exc
        self.metrics_port = self._metrics_http.port
        self.telemetry.metrics = metrics

    @property
    def metrics_scheme(self) -> str:
        return "https" if self._metrics_tls is not None else "http"

    def _stop_metrics(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.close()
            self._metrics_http = None


async def serve(config: ServerConfig) -> None:
    """Listen, load the model, serve until SIGTERM or SIGINT, shut down gracefully, return.

    Raises ModelLoadError (model unusable) or ServeError (address unusable); a signal while the
    model loads stops the server once the load is over.
    """
    from cyserve.fastpath.engine import Engine

    engine_config = config.engine_config()
    try:
        tracer_provider = configure_tracing(version=_version())
    except ValueError as exc:
        raise ServeError(f"tracing: {exc}") from exc
    engines: list[Engine] = []  # the engine once loaded, whatever happens meanwhile

    def load_engine() -> Engine:
        engine = Engine.from_config(engine_config)
        engine.start()
        engines.append(engine)
        return engine

    server = Server(
        None, config.host, config.port, tracer_provider=tracer_provider,
        metrics_port=config.metrics_port or None, trace_content=config.trace_content,
        health_port=config.health_port or None, http_port=config.http_port or None,
        served_model_name=config.served_model_name or None,
        max_connection_age_s=config.max_connection_age_s,
        max_connection_age_grace_s=config.max_connection_age_grace_s, **_api_security(config),
    )
    with _SignalWaiter(signal.SIGTERM, signal.SIGINT) as signals:
        loading: asyncio.Future | None = None
        try:
            await server.start()
            log.info("server.loading", address=server.address, port=server.port,
                     health_port=server.health_port, http_address=server.http_address,
                     model_path=engine_config.model_path)
            loading = asyncio.ensure_future(server.load(load_engine))
            await asyncio.wait([loading, signals.first], return_when=asyncio.FIRST_COMPLETED)
            if loading.done():
                _log_started(server, loading.result(), engine_config.model_path, tracer_provider)
            received = await signals.first
            log.info("server.stopping", signal=received.name, grace_s=config.grace_s)
            await server.stop(config.grace_s)
        finally:
            await server.stop(0)  # no-op after a graceful stop; cleans up after a failed start
            if loading is not None and not loading.done():
                await asyncio.wait([loading])  # a thread cannot be cancelled: let the load end
            for engine in engines:
                await asyncio.to_thread(engine.stop)
            if tracer_provider is not None:
                await asyncio.to_thread(tracer_provider.shutdown)  # flushes the last spans
    log.info("server.stopped")


def _log_started(server: Server, engine: EngineClient, model_path: str, tracer_provider: Any) -> None:
    info = engine.model_info
    log.info(
        "server.started",
        address=server.address,
        port=server.port,
        model=info.name,
        model_path=model_path,
        quantization=info.quantization,
        metrics_port=server.metrics_port,
        metrics_scheme=server.metrics_scheme,
        health_port=server.health_port,
        http_address=server.http_address,
        tracing="on" if tracer_provider is not None else "off",
        **_engine_stats(engine),
    )


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


def _api_security(config: ServerConfig) -> dict[str, Any]:
    """Server kwargs for the limits, TLS (gRPC and metrics ports) and auth of `config`. Raises
    ServeError when unusable."""
    from cyserve.service.auth import load_token
    from cyserve.service.tls import server_credentials

    limits = config.limits()  # from_env checked every setting's bounds
    try:
        if bool(config.tls_cert) != bool(config.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if config.tls_client_ca and not config.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        files = TLSFiles(config.tls_cert, config.tls_key, config.tls_client_ca) if config.tls_cert else None
        credentials = server_credentials(files.cert, files.key, files.client_ca) if files else None
        token = load_token(config.auth_token_file)
    except ValueError as exc:
        raise ServeError(str(exc)) from exc
    return {"limits": limits, "credentials": credentials, "auth_token": token, "metrics_tls": files,
            "http_tls": files}


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None, what: str = "") -> int:
    """Listen on `address` (TLS with credentials); the bound port, or ServeError naming it."""
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise ServeError(f"cannot listen on {address}{what}: {exc}") from exc
    if port == 0:
        raise ServeError(f"cannot listen on {address}{what}")
    return port


def _engine_stats(engine: EngineClient) -> dict[str, Any]:
    try:
        stats = engine.stats()
    except Exception:  # stats are informative only
        return {}
    return {"num_kv_blocks": stats.num_total_blocks, "num_free_kv_blocks": stats.num_free_blocks}


def _model_name(engine: EngineClient) -> str:
    return engine.model_info.name


def _version() -> str | None:
    try:
        return importlib.metadata.version("cyserve")
    except importlib.metadata.PackageNotFoundError:
        return None
