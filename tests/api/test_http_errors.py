"""Every error status of the HTTP API, in OpenAI's error JSON, as the official client sees it:
400 naming the parameter, 401, 404 (unknown model, unknown path), 413, 429 with Retry-After,
503 with Retry-After while the model loads and while the server drains. No error leaks KV blocks."""
from __future__ import annotations

import ssl

import httpx
import openai
import pytest
from api.conftest import LIMITS
from server_support import running_server, serving, wait_until

from cyserve.service.limits import ServiceLimits

HI = [{"role": "user", "content": "Hi"}]


def _error(exc: openai.APIStatusError) -> dict:
    return exc.response.json()["error"]


BAD_PARAMS = [
    ({"top_p": 3}, "top_p"),
    ({"temperature": -1}, "temperature"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 10**9}, "max_completion_tokens"),
    ({"presence_penalty": 5}, "presence_penalty"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"logprobs": True, "top_logprobs": 99}, "top_logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop[0]"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "not a schema"}}},
     "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name", "parameters": {}}}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"seed": "seven"}, "seed"),
]


@pytest.mark.parametrize("params,param", BAD_PARAMS, ids=[p for _, p in BAD_PARAMS])
def test_a_bad_parameter_is_400_naming_it(openai_client, model_name, engine, params, param):
    body = {"model": model_name, "messages": HI, "max_tokens": 2, **params}
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(**body)
    error = _error(err.value)
    assert err.value.status_code == 400
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert param.split("[")[0] in error["message"]
    assert engine.stats().num_running == 0


def test_a_json_schema_that_does_not_compile_is_400_naming_response_format(openai_client, model_name):
    schema = {"type": "object", "properties": {"city": {"$ref": "#/nowhere"}}, "required": ["city"]}
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(
            model=model_name, messages=HI, max_tokens=2,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    error = _error(err.value)
    assert error["param"] == "response_format" and "does not compile" in error["message"], error
    r = openai_client.chat.completions.create(model=model_name, messages=HI, max_tokens=1,
                                              response_format={"type": "text"})
    assert r.choices[0].finish_reason


def test_completions_parameters_are_named_too(openai_client, model_name):
    for params, param in (({"prompt": [[]]}, "prompt[0]"), ({"prompt": [99999999]}, "prompt"),
                          ({"prompt": "x", "logprobs": 99}, "logprobs"), ({"prompt": "x", "echo": True}, "echo"),
                          ({"prompt": "x", "best_of": 3}, "best_of")):
        with pytest.raises(openai.BadRequestError) as err:
            openai_client.completions.create(model=model_name, max_tokens=1, **params)
        assert _error(err.value)["param"] == param


def test_a_prompt_over_the_limit_is_400_context_length_exceeded(openai_client, model_name):
    long_prompt = "word " * (LIMITS.max_prompt_tokens + 50)
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.completions.create(model=model_name, prompt=long_prompt, max_tokens=1)
    error = _error(err.value)
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert str(LIMITS.max_prompt_tokens) in error["message"]


def test_not_json_is_400(http_api):
    r = httpx.post(http_api.http_address + "/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_an_unknown_model_is_404(openai_client, model_name):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=1)
    error = _error(err.value)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert model_name in error["message"]
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("gpt-4o")


def test_an_unknown_path_is_404_and_a_wrong_method_405(http_api):
    r = httpx.post(http_api.http_address + "/v1/embeddings", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = httpx.get(http_api.http_address + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_body_over_the_message_limit_is_413(openai_client, model_name):
    huge = "x" * (LIMITS.max_message_bytes + 1)
    with pytest.raises(openai.APIStatusError) as err:
        openai_client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": huge}])
    assert err.value.status_code == 413
    assert str(LIMITS.max_message_bytes) in _error(err.value)["message"]


def test_without_the_token_is_401_and_health_needs_none(engine):
    with serving(engine, http_port=0, auth_token="s3cret") as server:
        url = server.http_address
        client = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            client.models.list()
        assert err.value.status_code == 401 and _error(err.value)["code"] == "invalid_api_key"
        assert err.value.response.headers["www-authenticate"] == "Bearer"
        bare = httpx.get(url + "/v1/models")  # no Authorization header at all
        assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/health").status_code == 200
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        name = good.models.list().data[0].id
        assert good.chat.completions.create(model=name, messages=HI, max_tokens=1).choices


def test_over_the_stream_limit_is_429_with_retry_after(engine):
    limits = ServiceLimits(max_concurrent_streams=1, retry_after_s=2.5)
    with serving(engine, limits=limits, http_port=0) as server:
        client = openai.OpenAI(base_url=server.http_address + "/v1", api_key="x", max_retries=0)
        name = client.models.list().data[0].id
        holding = client.chat.completions.create(model=name, messages=HI, max_tokens=200, stream=True,
                                                 extra_body={"ignore_eos": True})
        next(iter(holding))  # the one stream slot is taken
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model=name, messages=HI, max_tokens=1)
        holding.close()
    assert err.value.status_code == 429
    assert err.value.response.headers["retry-after"] == "3"
    assert _error(err.value)["code"] == "too_many_streams"
    assert wait_until(lambda: engine.stats().num_free_blocks == engine.stats().num_total_blocks)


def test_while_the_model_loads_every_call_is_503_with_retry_after():
    with running_server(None, http_port=0) as (server, _):
        url = server.http_address
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="any", messages=HI)
        assert err.value.status_code == 503 and _error(err.value)["code"] == "model_loading"
        assert err.value.response.headers["retry-after"] == "1"
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and "retry-after" in health.headers
        with pytest.raises(openai.InternalServerError):
            client.models.list()


def test_while_draining_new_calls_are_503_and_calls_in_flight_finish(engine):
    with running_server(engine, http_port=0) as (server, loop):
        client = openai.OpenAI(base_url=server.http_address + "/v1", api_key="x", max_retries=0)
        name = client.models.list().data[0].id
        in_flight = client.chat.completions.create(model=name, messages=HI, max_tokens=12, stream=True,
                                                   extra_body={"ignore_eos": True})
        first = next(iter(in_flight))
        stopping = loop.submit(server.stop(30.0))
        assert wait_until(lambda: server._servicer.draining)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=name, messages=HI, max_tokens=1)
        assert err.value.status_code == 503 and _error(err.value)["code"] == "shutting_down"
        assert "retry-after" in err.value.response.headers
        assert httpx.get(server.http_address + "/health").status_code == 503
        rest = list(in_flight)
        assert first.choices[0].delta.role == "assistant"
        assert rest[-1].choices[0].finish_reason == "length"  # ran to its end within the grace
        stopping.result(60)


def test_a_stream_dropped_mid_way_aborts_and_returns_every_block(engine):
    """The client closes its connection after a few chunks: the request is aborted (it does not
    run to max_tokens), its KV blocks come back, and the server keeps answering."""
    with serving(engine, http_port=0) as server:
        client = openai.OpenAI(base_url=server.http_address + "/v1", api_key="x", max_retries=0)
        name = client.models.list().data[0].id
        stream = client.chat.completions.create(model=name, messages=HI, max_tokens=2000, stream=True,
                                                extra_body={"ignore_eos": True})
        chunks = iter(stream)
        for _ in range(3):
            next(chunks)
        assert engine.stats().num_running == 1
        stream.close()  # drops the TCP connection mid-stream
        assert wait_until(lambda: engine.stats().num_running == 0, timeout=20), "the request ran on"
        assert wait_until(lambda: engine.stats().num_free_blocks == engine.stats().num_total_blocks)
        again = client.chat.completions.create(model=name, messages=HI, max_tokens=2)
        assert again.choices[0].message.content is not None


def test_metrics_are_scraped_on_the_http_port_too_without_a_token(engine):
    """An inference gateway's endpoint picker reads the queue and KV-cache gauges from the port it
    routes to, with no token: the same exposition as --metrics-port."""
    with serving(engine, http_port=0, metrics_port=0, auth_token="s3cret") as server:
        r = httpx.get(server.http_address + "/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        names = {line.split("{")[0].split(" ")[0] for line in r.text.splitlines() if not line.startswith("#")}
        assert {"cyserve:num_requests_waiting", "cyserve:num_requests_running",
                "cyserve:kv_cache_usage_perc"} <= names, sorted(names)
        scraped = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
        assert "cyserve:kv_cache_usage_perc" in scraped
        assert httpx.get(server.http_address + "/v1/models").status_code == 401


def test_https_with_the_grpc_ports_certificate_and_token(engine, tmp_path):
    """The HTTP API is served over TLS with the files gRPC uses, and with its bearer token."""
    from cyserve.service.tls import TLSFiles, server_credentials

    from .support import make_pki

    make_pki(tmp_path)
    cert, key = str(tmp_path / "server.pem"), str(tmp_path / "server.key")
    with serving(engine, credentials=server_credentials(cert, key), http_port=0,
                 http_tls=TLSFiles(cert, key), auth_token="s3cret") as server:
        url = server.http_address.replace("127.0.0.1", "localhost")  # the name the certificate holds
        assert url.startswith("https://")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))) as http:
            client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0, http_client=http)
            name = client.models.list().data[0].id
            assert client.chat.completions.create(model=name, messages=HI, max_tokens=1).choices
        with pytest.raises(httpx.TransportError):  # plaintext HTTP on the TLS port gets no answer
            httpx.get(url.replace("https://", "http://") + "/health", timeout=5)
