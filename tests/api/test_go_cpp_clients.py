"""The Go and C++ clients (clients/go, clients/cpp), built from Debian's packages, against real
servers on 127.0.0.1: each streams a generation, reads a rich error's details (BadRequest's field,
RetryInfo), cancels a stream (and the server stops generating), and calls over mutual TLS with a
bearer token."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_support import running_server, serving, wait_until
from service.support import FakeEngine

from cyserve.service.tls import server_credentials
from cyserve.v1 import generation_pb2 as pb

from .client_builds import build_cpp, build_go
from .support import make_pki

TOKEN = "client-test-token"
BUILDERS = {"go": build_go, "cpp": build_cpp}


@pytest.fixture(scope="session", params=sorted(BUILDERS))
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return BUILDERS[request.param](tmp_path_factory.mktemp(f"client-{request.param}"))


def call(binary: Path, address: str, mode: str, *options: str) -> dict[str, Any]:
    done = subprocess.run([str(binary), "--mode", mode, "--addr", address, *options], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, f"{binary.name} --mode {mode}: exit {done.returncode}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def secure() -> Iterator[tuple[Any, FakeEngine, Path]]:
    """A fake-engine server that needs a client certificate and the bearer token."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        pki = Path(folder)
        make_pki(pki)
        creds = server_credentials(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
        engine = FakeEngine()
        with serving(engine, credentials=creds, auth_token=TOKEN) as server:
            yield server, engine, pki


def tls_options(pki: Path, token: str | None = TOKEN, cert: bool = True) -> list[str]:
    options = ["--tls-ca", str(pki / "ca.pem")]
    if cert:
        options += ["--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")]
    return options + (["--token", token] if token else [])


def test_streams_a_generation(client, api, api_stub):
    result = call(client, api.address, "stream", "--prompt", "The capital of France is", "--max-tokens", "8")
    expected = api_stub.Generate(pb.GenerateRequest(prompt="The capital of France is", sampling=pb.SamplingParams(
        temperature=0), stopping=pb.StoppingCriteria(max_tokens=8)), timeout=120)
    assert result["code"] == "OK", result
    assert result["text"] == expected.text and result["token_ids"] == list(expected.token_ids)
    assert result["messages"] > 1, "a stream of 8 tokens came in one message"
    assert result["finish_reason"] == pb.FinishReason.Name(expected.finish_reason)
    assert result["completion_tokens"] == expected.usage.completion_tokens == len(result["token_ids"])
    assert result["prompt_tokens"] == expected.usage.prompt_tokens


def test_reads_the_bad_request_field(client, api):
    result = call(client, api.address, "invalid")
    assert result["code"] == "INVALID_ARGUMENT" and not result["retryable"]
    fields = [field for field, _ in result["violations"]]
    assert fields == ["sampling.top_p"], result
    assert "top_p" in result["violations"][0][1] or "(0, 1]" in result["violations"][0][1]


def test_reads_retry_info_while_the_model_loads(client):
    with running_server(None) as (server, _):
        result = call(client, server.address, "unary")
    assert result["code"] == "UNAVAILABLE" and result["retryable"], result
    assert result["retry_delay_s"] > 0 and result["reason"] == "MODEL_LOADING"


def test_cancels_a_stream_and_the_server_stops(client, secure):
    server, engine, pki = secure
    result = call(client, f"localhost:{server.port}", "cancel", "--prompt", "SLOW", *tls_options(pki))
    assert result["code"] == "CANCELLED" and result["messages"] >= 1, result
    engine_request_id = engine.requests[-1].request_id
    assert wait_until(lambda: engine_request_id in engine.closed_early, timeout=10), \
        "the server kept generating after the client cancelled"
    assert wait_until(lambda: not engine.live, timeout=10)


def test_mutual_tls_with_a_token(client, secure):
    server, _, pki = secure
    address = f"localhost:{server.port}"
    ok = call(client, address, "unary", "--prompt", "hi", "--max-tokens", "64", *tls_options(pki))
    assert ok["code"] == "OK" and ok["text"] == "Hi there" and ok["finish_reason"] == "FINISH_REASON_EOS", ok
    wrong = call(client, address, "unary", *tls_options(pki, token="wrong"))
    assert wrong["code"] == "UNAUTHENTICATED" and not wrong["retryable"], wrong
    no_cert = call(client, address, "unary", *tls_options(pki, cert=False))
    assert no_cert["code"] == "UNAVAILABLE", no_cert  # the handshake fails: no client certificate


@pytest.mark.parametrize("language", sorted(BUILDERS))
def test_a_missing_toolchain_fails_and_names_the_packages(language, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no go, protoc, g++ or make on it
    with pytest.raises(pytest.fail.Exception, match="install them with: apt-get install -y .*protobuf-compiler"):
        BUILDERS[language](tmp_path)
