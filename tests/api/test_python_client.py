"""cyserve.client, the typed Python client (and the cyserve-client distribution), against real
servers on 127.0.0.1: generate, stream, chat and tokenize; BadRequest and RetryInfo details as
CallError; retries that wait for a loading model but never pass the deadline; a stream closed
early cancels the generation; TLS, mutual TLS and the bearer token, and what a refused token or
certificate says."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from server_support import running_server, serving, wait_until
from service.support import FakeEngine

from cyserve.client import NO_RETRY, CallError, ChannelOptions, Client, RetryPolicy, generate_request
from cyserve.service.tls import server_credentials
from cyserve.v1 import generation_pb2 as pb

from .support import make_pki

TOKEN = "python-client-token"
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[Any, FakeEngine]]:
    engine = FakeEngine()
    with serving(engine) as server:
        yield server, engine


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    make_pki(folder)
    return folder


@pytest.fixture(scope="module")
def secure(pki: Path) -> Iterator[Any]:
    """A server that asks for a client certificate (mutual TLS) and the bearer token."""
    creds = server_credentials(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    with serving(FakeEngine(), credentials=creds, auth_token=TOKEN) as server:
        yield server


def mtls(pki: Path, **options: Any) -> dict[str, Any]:
    return {"tls_ca": str(pki / "ca.pem"), "tls_cert": str(pki / "client.pem"), "tls_key": str(pki / "client.key"),
            **options}


# ---- calls against the real model ----


def test_stream_generate_chat_and_tokenize_match_the_raw_stub(api, api_stub):
    with Client(api.address, timeout=120) as client:
        pieces = list(client.stream("The capital of France is", max_tokens=8, temperature=0))
        reply = client.generate("The capital of France is", max_tokens=8, temperature=0)
        chat = client.chat([{"role": "user", "content": "What is the capital of Germany?"}], max_tokens=12,
                           temperature=0)
        ids = client.tokenize("Hello <|im_start|>world")
        info = client.model_info()
    expected = api_stub.Generate(pb.GenerateRequest(prompt="The capital of France is", sampling=pb.SamplingParams(
        temperature=0), stopping=pb.StoppingCriteria(max_tokens=8)), timeout=120)
    assert len(pieces) > 1 and "".join(p.text for p in pieces) == reply.text == expected.text
    assert pieces[-1].finish_reason == expected.finish_reason and pieces[-1].usage == expected.usage
    assert [i for p in pieces for i in p.token_ids] == list(expected.token_ids)
    assert "Berlin" in chat.text
    assert ids == list(api_stub.Tokenize(pb.TokenizeRequest(text="Hello <|im_start|>world")).token_ids)
    assert info.vocab_size > 0


# ---- requests ----


def test_flat_parameters_land_in_their_messages():
    request = generate_request("hi", temperature=0.5, seed=7, max_tokens=3, stop="END", logprobs=2, priority=1,
                               logit_bias={5: -1.0})
    assert request.sampling.temperature == 0.5 and request.sampling.seed == 7
    assert request.stopping.max_tokens == 3 and list(request.stopping.stop) == ["END"]
    assert request.output.logprobs == 2 and request.priority == 1 and dict(request.sampling.logit_bias) == {5: -1.0}
    assert not request.sampling.HasField("top_p"), "an unset parameter must stay unset (the server's default)"
    chat = generate_request(messages=[("system", "be brief"), {"role": "user", "content": "hi"}])
    assert [(m.role, m.content) for m in chat.messages] == [("system", "be brief"), ("user", "hi")]
    assert chat.add_generation_prompt


def test_an_unknown_parameter_names_the_known_ones():
    with pytest.raises(TypeError, match=r"unknown generation parameter 'top_q'.*top_p"):
        generate_request("hi", top_q=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        generate_request("hi", messages=[("user", "hi")])


# ---- errors, retries, deadlines, cancel ----


def test_a_bad_request_is_a_call_error_naming_the_field(fake):
    server, _ = fake
    with Client(server.address) as client, pytest.raises(CallError) as caught:
        client.generate("hi", top_p=2)
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT and not error.retryable
    assert [v.field for v in error.violations] == ["sampling.top_p"]
    assert "sampling.top_p" in str(error)


def test_retries_wait_for_a_loading_model_then_succeed():
    with running_server(None) as (server, loop_thread):
        with Client(server.address, retry=NO_RETRY) as client, pytest.raises(CallError) as caught:
            client.generate("hi")
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE and caught.value.retryable
        assert caught.value.reason == "MODEL_LOADING" and caught.value.retry_delay_s == 1.0
        attach = threading.Timer(0.3, lambda: loop_thread.run(server.attach(FakeEngine())))
        attach.start()
        started = time.monotonic()
        with Client(server.address, retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.05)) as client:
            reply = client.generate("hi", max_tokens=16)
            pieces = list(client.stream("hi", max_tokens=16))
        attach.join()
    assert reply.text == "Hi there" and "".join(p.text for p in pieces) == "Hi there"
    assert time.monotonic() - started >= 1.0, "the client retried sooner than the server's RetryInfo asked"


def test_retries_never_pass_the_deadline():
    with running_server(None) as (server, _):
        with Client(server.address, retry=RetryPolicy(max_attempts=50), timeout=0.5) as client:
            started = time.monotonic()
            with pytest.raises(CallError) as caught:
                client.generate("hi")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 0.5, "a 1 s RetryInfo delay past a 0.5 s deadline must fail at once"


def test_a_server_that_is_not_there_says_where_it_was_looked_for():
    with Client("127.0.0.1:1", retry=NO_RETRY, timeout=5) as client, pytest.raises(CallError) as caught:
        client.generate("hi")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE and caught.value.retryable
    assert "is the server running at 127.0.0.1:1" in str(caught.value)


def test_closing_a_stream_early_cancels_the_generation(fake):
    server, engine = fake
    with Client(server.address) as client:
        stream = client.stream("SLOW", max_tokens=5000)
        first = next(stream)
        stream.close()
    assert first.text
    request_id = engine.requests[-1].request_id
    assert wait_until(lambda: request_id in engine.closed_early, timeout=10), "the server kept generating"
    assert wait_until(lambda: not engine.live, timeout=10)


# ---- TLS, mutual TLS, tokens ----


def test_mutual_tls_with_the_token(secure, pki):
    with Client(f"localhost:{secure.port}", **mtls(pki, token=TOKEN)) as client:
        assert client.generate("hi").text == "Hi there"
        assert "".join(p.text for p in client.stream("hi")) == "Hi there"


def test_a_refused_token_says_so(secure, pki):
    for token in ("wrong", None):
        with Client(f"localhost:{secure.port}", **mtls(pki, token=token)) as client, \
                pytest.raises(CallError) as caught:
            client.generate("hi")
        assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED and not caught.value.retryable
        assert "refused the call's bearer token" in str(caught.value)


@pytest.mark.parametrize("problem", ["no client certificate", "another CA", "plaintext"])
def test_a_refused_certificate_says_so_and_is_not_retried(secure, pki, tmp_path, problem):
    options: dict[str, Any] = mtls(pki, token=TOKEN)
    if problem == "no client certificate":
        del options["tls_cert"], options["tls_key"]
    elif problem == "another CA":
        make_pki(tmp_path)
        options["tls_ca"] = str(tmp_path / "ca.pem")
    else:
        options = {"token": TOKEN}
    retry = RetryPolicy(max_attempts=3)
    with Client(f"localhost:{secure.port}", retry=retry, timeout=10, **options) as client:
        started = time.monotonic()
        with pytest.raises(CallError) as caught:
            client.generate("hi")
    error = caught.value
    assert error.code is grpc.StatusCode.UNAVAILABLE, error
    if problem == "plaintext":
        assert "serving TLS, which needs tls_ca=" in str(error)
    elif problem == "no client certificate":  # the server closes the connection: a restart looks the same
        assert "mutual TLS also closes the connection of a client without a certificate" in str(error), error
    else:
        assert error.tls_failed and not error.retryable and "TLS handshake failed" in str(error), error
        assert time.monotonic() - started < 2, "a failed handshake was retried"


def test_a_token_over_plaintext_to_a_server_on_this_host():
    with serving(FakeEngine(), auth_token=TOKEN) as server, Client(server.address, token=TOKEN) as client:
        assert client.generate("hi").text == "Hi there"


# ---- options ----


def test_options_refuse_what_cannot_work(pki):
    with pytest.raises(ValueError, match="give both tls_cert and tls_key"):
        ChannelOptions(tls_ca=str(pki / "ca.pem"), tls_cert=str(pki / "client.pem"))
    with pytest.raises(ValueError, match="a client certificate is for TLS"):
        ChannelOptions(tls_cert=str(pki / "client.pem"), tls_key=str(pki / "client.key"))
    with pytest.raises(ValueError, match="the token is empty"):
        ChannelOptions(token=" ")
    with pytest.raises(ValueError, match="cannot read the TLS CA file '/nonexistent/ca.pem'"):
        Client("localhost:1", tls_ca="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="is not a PEM file"):
        Client("localhost:1", tls_ca=__file__)


def test_options_come_from_the_environment_and_arguments_win():
    env = {"CYSERVE_ADDRESS": "10.0.0.1:1", "CYSERVE_TLS_CA": "ca.pem", "CYSERVE_CLIENT_CERT": "c.pem",
           "CYSERVE_CLIENT_KEY": "c.key", "CYSERVE_TOKEN": "t", "CYSERVE_TLS_CERT": "the server's, not ours"}
    options = ChannelOptions.from_env(env)
    assert options == ChannelOptions("10.0.0.1:1", tls_ca="ca.pem", tls_cert="c.pem", tls_key="c.key", token="t")
    assert ChannelOptions.from_env(env, address="h:2", token="u").address == "h:2"
    assert ChannelOptions.from_env({}) == ChannelOptions()


@given(retry=st.integers(1, 12), hint=st.one_of(st.none(), st.floats(0, 30)), seed=st.integers(0, 2**32))
def test_backoff_grows_within_its_bounds_and_honours_retry_info(retry, hint, seed):
    import random

    policy = RetryPolicy(initial_backoff_s=0.25, max_backoff_s=8.0, rng=random.Random(seed))
    error = CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", retry_delay_s=hint)
    ceiling = min(8.0, 0.25 * 2 ** (retry - 1))
    delay = policy.delay_s(retry, error)
    assert ceiling / 2 <= delay <= ceiling or delay == hint
    assert delay >= (hint or 0)
    assert policy.next_delay_s(4, error, None) is None, "the 4th failure of 4 attempts is final"
    shortest_first_wait = max(0.25 / 2, hint or 0)
    assert policy.next_delay_s(1, error, remaining_s=shortest_first_wait) is None, \
        "a wait that reaches the deadline is no wait"


def test_resource_exhausted_without_retry_info_is_final():
    assert not CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max").retryable
    assert CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", retry_delay_s=0.5).retryable


def test_the_client_imports_only_grpc_and_the_stubs():
    code = ("import sys, cyserve.client; "
            "print(sorted(m for m in sys.modules if m.startswith(('cyserve', 'numpy', 'torch'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    modules = eval(done.stdout)  # a printed list of names
    assert all(m.startswith(("cyserve.client", "cyserve.v1")) or m == "cyserve" for m in modules), modules
