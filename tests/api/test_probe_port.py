"""With TLS on: the plaintext health-only port that probes use (grpc.health.v1 and nothing else,
no token asked, the main port's statuses while loading, serving and draining), and /metrics over
HTTPS with the gRPC port's certificate (fake engine: no model)."""
from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_support import running_server, serving, wait_until
from service.support import FakeEngine

from cyserve.service.config import ServerConfig
from cyserve.service.server import HEALTH_SERVICES, SERVICE_NAME, _api_security
from cyserve.service.tls import TLSFiles, server_credentials
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

from .support import make_pki

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TOKEN = "probe-port-test-token"


def _tls(tmp_path, client_ca: bool = False) -> tuple[dict[str, bytes], TLSFiles]:
    pki = make_pki(tmp_path)
    files = TLSFiles(str(tmp_path / "server.pem"), str(tmp_path / "server.key"),
                     str(tmp_path / "ca.pem") if client_ca else None)
    return pki, files


def _status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_port_is_plaintext_health_only_beside_tls_and_tokens(tmp_path):
    pki, files = _tls(tmp_path)
    creds = server_credentials(files.cert, files.key)
    with serving(FakeEngine(), credentials=creds, auth_token=TOKEN, health_port=0) as server:
        assert server.health_port not in (None, 0, server.port)
        for service in HEALTH_SERVICES:  # plaintext, no token: what the kubelet sends
            assert _status(server.health_address, service) == SERVING
        with grpc.insecure_channel(server.health_address) as channel:
            with pytest.raises(grpc.RpcError) as err:  # no Generation, even with the token
                pb_grpc.GenerationStub(channel).Generate(
                    pb.GenerateRequest(prompt="hi"), metadata=(("authorization", f"Bearer {TOKEN}"),),
                    timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.RpcError) as err:  # no reflection: nothing to discover
                list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The main port still speaks TLS only.
        with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(f"localhost:{server.port}", grpc.ssl_channel_credentials(pki["ca.pem"])) as ch:
            response = pb_grpc.GenerationStub(ch).Generate(
                pb.GenerateRequest(prompt="hi"), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
            assert response.text == "Hi there"


def test_no_health_port_unless_asked():
    with serving(FakeEngine()) as server:
        assert server.health_port is None and server.health_address is None


def test_health_port_says_not_serving_while_loading_and_draining():
    with running_server(None, health_port=0) as (server, loop):
        assert _status(server.health_address, SERVICE_NAME) == NOT_SERVING  # no model yet
        engine = FakeEngine()
        loop.run(server.attach(engine))
        assert _status(server.health_address, SERVICE_NAME) == SERVING
        with grpc.insecure_channel(server.address) as channel:
            stream = pb_grpc.GenerationStub(channel).GenerateStream(
                pb.GenerateRequest(prompt="SLOW", stopping=pb.StoppingCriteria(max_tokens=300)), timeout=30)
            next(stream)  # in flight: the drain waits for it
            stopping = loop.submit(server.stop(5.0))
            assert wait_until(lambda: _status(server.health_address, SERVICE_NAME) == NOT_SERVING, 5)
            assert _status(server.health_address) == NOT_SERVING
            assert not stopping.done(), "the health port answers while the drain runs"
            list(stream)
            stopping.result(30)
    with pytest.raises(grpc.RpcError):
        _status(server.health_address)  # closed with the server


def _scrape(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return response.read().decode()


def test_metrics_are_https_with_the_grpc_certificate_when_tls_is_on(tmp_path):
    pki, files = _tls(tmp_path)
    with serving(FakeEngine(), credentials=server_credentials(files.cert, files.key),
                 metrics_port=0, metrics_tls=files) as server:
        assert server.metrics_scheme == "https"
        trusted = ssl.create_default_context(cadata=pki["ca.pem"].decode())
        assert "cyserve_requests_running" in _scrape(f"https://localhost:{server.metrics_port}/metrics", trusted)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _scrape(f"http://127.0.0.1:{server.metrics_port}/metrics")  # no plaintext fallback
        # A silent connection does not stall the listener: the next scrape is served.
        with socket.create_connection(("127.0.0.1", server.metrics_port)):
            assert "cyserve_requests_running" in _scrape(f"https://localhost:{server.metrics_port}/metrics",
                                                         trusted)


def test_metrics_ask_for_a_client_certificate_under_mutual_tls(tmp_path):
    pki, files = _tls(tmp_path, client_ca=True)
    with serving(FakeEngine(), credentials=server_credentials(files.cert, files.key, files.client_ca),
                 metrics_port=0, metrics_tls=files) as server:
        url = f"https://localhost:{server.metrics_port}/metrics"
        anonymous = ssl.create_default_context(cadata=pki["ca.pem"].decode())
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            _scrape(url, anonymous)
        with_cert = ssl.create_default_context(cadata=pki["ca.pem"].decode())
        with_cert.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        assert "cyserve_requests_running" in _scrape(url, with_cert)


def test_serve_gives_the_metrics_port_the_tls_files(tmp_path):
    """`cyserve serve` with --tls-cert/--tls-key (and a client CA) serves /metrics with them."""
    _, files = _tls(tmp_path, client_ca=True)
    config = ServerConfig(tls_cert=files.cert, tls_key=files.key, tls_client_ca=files.client_ca)
    assert _api_security(config)["metrics_tls"] == files
    assert _api_security(ServerConfig())["metrics_tls"] is None
