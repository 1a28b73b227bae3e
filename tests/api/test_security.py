"""TLS, mutual TLS and bearer-token auth with certificates generated here (fake engine: no model)."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_support import serving
from service.support import FakeEngine

from cyserve.service.auth import load_token
from cyserve.service.tls import server_credentials
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

from .support import make_pki

TOKEN = "s3cret-token-for-tests"


def _generate(channel: grpc.Channel, metadata=None) -> pb.GenerateResponse:
    return pb_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(prompt="hi"), metadata=metadata,
                                                    timeout=20)


def test_tls_serves_and_refuses_plaintext(tmp_path):
    pki = make_pki(tmp_path)
    creds = server_credentials(str(tmp_path / "server.pem"), str(tmp_path / "server.key"))
    with serving(FakeEngine(), credentials=creds) as server:
        target = f"localhost:{server.port}"
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(pki["ca.pem"])) as channel:
            assert _generate(channel).finish_reason == pb.FINISH_REASON_EOS
            caps = pb_grpc.GenerationStub(channel).GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
            assert caps.tls and not caps.auth_required
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as err:
            _generate(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(tmp_path):
    pki = make_pki(tmp_path)
    creds = server_credentials(str(tmp_path / "server.pem"), str(tmp_path / "server.key"),
                               str(tmp_path / "ca.pem"))
    with serving(FakeEngine(), credentials=creds) as server:
        target = f"localhost:{server.port}"
        with_cert = grpc.ssl_channel_credentials(pki["ca.pem"], pki["client.key"], pki["client.pem"])
        with grpc.secure_channel(target, with_cert) as channel:
            assert _generate(channel).text == "Hi there"
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(pki["ca.pem"])) as channel:
            with pytest.raises(grpc.RpcError) as err:
                _generate(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_token_auth_with_health_exempt(tmp_path, capfd):
    with serving(FakeEngine(), auth_token=TOKEN) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GenerationStub(channel)
            for metadata in (None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
                with pytest.raises(grpc.RpcError) as err:
                    _generate(channel, metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as err:  # streaming calls too
                    list(stub.GenerateStream(pb.GenerateRequest(prompt="hi"), metadata=metadata, timeout=10))
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", f"Bearer {TOKEN}"),)
            assert _generate(channel, good).text == "Hi there"
            assert "".join(r.text for r in stub.GenerateStream(
                pb.GenerateRequest(prompt="hi"), metadata=good, timeout=10)) == "Hi there"
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    out, err_text = capfd.readouterr()
    assert TOKEN not in out and TOKEN not in err_text, "the token must never be logged"


def test_token_is_loaded_from_a_file_or_the_environment(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert load_token(str(path), {}) == TOKEN
    assert load_token(None, {"CYSERVE_AUTH_TOKEN": TOKEN}) == TOKEN
    assert load_token(None, {}) is None
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError):
        load_token(str(tmp_path / "empty"), {})
