"""The Prometheus endpoint: a scrape before and after calls shows counters and histograms moving
by exactly what the calls did, under our names, the gen_ai_server_* names and the vLLM-style
names; engine gauges come from engine.stats() at scrape time."""
from __future__ import annotations

import threading
import urllib.request

import grpc
import pytest
from service.support import wait_until

from cyserve.service.observability.metrics import length_buckets
from cyserve.v1 import generation_pb2 as pb

from .support import PREFILL_S, QUEUE_S, Samples, scrape, value

TIMEOUT = 10.0
MODEL = "fake"
GENAI = {"gen_ai_operation_name": "text_completion", "gen_ai_provider_name": "cyserve",
         "gen_ai_request_model": MODEL}


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_a_generate_call_moves_counters_and_histograms(traced_server, traced_stub, timed_engine):
    port = traced_server.metrics_port
    before = scrape(port)
    reply = traced_stub.Generate(pb.GenerateRequest(prompt="hello"), timeout=TIMEOUT)
    after = scrape(port)
    num_prompt, num_generated = reply.usage.prompt_tokens, reply.usage.completion_tokens
    assert (num_prompt, num_generated) == (5, len(timed_engine.reply) + 1)
    m = {"model_name": MODEL}

    for name in ("cyserve_prompt_tokens_total", "cyserve:prompt_tokens_total"):
        assert delta(before, after, name, **m) == num_prompt
    for name in ("cyserve_generation_tokens_total", "cyserve:generation_tokens_total"):
        assert delta(before, after, name, **m) == num_generated
    assert delta(before, after, "cyserve_requests_finished_total", finish_reason="eos", **m) == 1
    assert delta(before, after, "cyserve:request_success_total", finished_reason="stop", **m) == 1
    assert delta(before, after, "cyserve_requests_total", method="Generate", code="OK", **m) == 1

    # one observation per request...
    for name in ("cyserve:time_to_first_token_seconds", "cyserve:e2e_request_latency_seconds",
                 "cyserve:request_queue_time_seconds", "cyserve:request_prefill_time_seconds",
                 "cyserve:request_decode_time_seconds", "cyserve:request_inference_time_seconds",
                 "cyserve:request_time_per_output_token_seconds", "cyserve:request_prompt_tokens",
                 "cyserve:request_generation_tokens"):
        assert delta(before, after, f"{name}_count", **m) == 1, name
    for name in ("gen_ai_server_time_to_first_token_seconds", "gen_ai_server_time_per_output_token_seconds"):
        assert delta(before, after, f"{name}_count", **GENAI) == 1, name
    assert delta(before, after, "gen_ai_server_request_duration_seconds_count", error_type="", **GENAI) == 1
    # ...one per gap between tokens, each token in its own output here...
    assert delta(before, after, "cyserve:inter_token_latency_seconds_count", **m) == num_generated - 1
    # ...and sums that are the values observed
    assert delta(before, after, "cyserve:request_prompt_tokens_sum", **m) == num_prompt
    assert delta(before, after, "cyserve:request_generation_tokens_sum", **m) == num_generated
    assert delta(before, after, "cyserve:request_queue_time_seconds_sum", **m) == pytest.approx(QUEUE_S)
    assert delta(before, after, "cyserve:request_prefill_time_seconds_sum", **m) == pytest.approx(PREFILL_S)
    ttft = delta(before, after, "cyserve:time_to_first_token_seconds_sum", **m)
    e2e = delta(before, after, "cyserve:e2e_request_latency_seconds_sum", **m)
    assert QUEUE_S + PREFILL_S <= ttft <= e2e < TIMEOUT
    assert delta(before, after, "gen_ai_server_time_to_first_token_seconds_sum", **GENAI) == pytest.approx(ttft)
    # a histogram's buckets are cumulative: the +Inf one counts every observation
    assert delta(before, after, "cyserve:request_prompt_tokens_bucket", le="5.0", **m) == 1
    assert delta(before, after, "cyserve:request_prompt_tokens_bucket", le="2.0", **m) == 0


def test_rejected_calls_count_by_status_code(traced_server, traced_stub):
    port = traced_server.metrics_port
    before = scrape(port)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as info:
            traced_stub.Generate(pb.GenerateRequest(prompt=""), timeout=TIMEOUT)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    traced_stub.Tokenize(pb.TokenizeRequest(text="abc"), timeout=TIMEOUT)
    m = {"model_name": MODEL}
    assert wait_until(lambda: delta(before, scrape(port), "cyserve_requests_total",
                                    method="Generate", code="INVALID_ARGUMENT", **m) == 2)
    after = scrape(port)
    assert delta(before, after, "cyserve_requests_total", method="Tokenize", code="OK", **m) == 1
    assert delta(before, after, "gen_ai_server_request_duration_seconds_count",
                 error_type="INVALID_ARGUMENT", **GENAI) == 2
    # nothing reached the engine
    assert delta(before, after, "cyserve_prompt_tokens_total", **m) == 0
    assert delta(before, after, "cyserve:e2e_request_latency_seconds_count", **m) == 0


def test_cancelled_stream_counts_as_cancelled(traced_server, traced_stub, timed_engine):
    port = traced_server.metrics_port
    before = scrape(port)
    request = pb.GenerateRequest(prompt="SLOW", stopping=pb.StoppingCriteria(max_tokens=1000))
    call = traced_stub.GenerateStream(request, timeout=TIMEOUT)
    next(call)  # generating now
    call.cancel()
    m = {"model_name": MODEL}
    assert wait_until(lambda: delta(before, scrape(port), "cyserve_requests_finished_total",
                                    finish_reason="cancelled", **m) == 1)
    after = scrape(port)
    assert delta(before, after, "cyserve_requests_total", method="GenerateStream", code="CANCELLED", **m) == 1
    assert delta(before, after, "cyserve:request_success_total", finished_reason="abort", **m) == 1
    assert delta(before, after, "cyserve_generation_tokens_total", **m) >= 1
    assert delta(before, after, "cyserve:e2e_request_latency_seconds_count", **m) == 0  # successes only


def test_engine_gauges_are_read_at_scrape_time(traced_server, timed_engine):
    samples = scrape(traced_server.metrics_port)
    stats = timed_engine.stats()
    m = {"model_name": MODEL}
    expected = {
        ("cyserve_requests_running", "cyserve:num_requests_running"): stats.num_running,
        ("cyserve_requests_waiting", "cyserve:num_requests_waiting"): stats.num_waiting,
        ("cyserve_kv_cache_usage_ratio", "cyserve:kv_cache_usage_perc"):
            1 - stats.num_free_blocks / stats.num_total_blocks,
        ("cyserve_prefix_cache_queries_total", "cyserve:prefix_cache_queries_total"):
            stats.prefix_cache_queries,
        ("cyserve_prefix_cache_hits_total", "cyserve:prefix_cache_hits_total"): stats.prefix_cache_hits,
        ("cyserve_preemptions_total", "cyserve:num_preemptions_total"): stats.num_preemptions,
    }
    for names, number in expected.items():
        for name in names:
            assert (name, frozenset(m.items())) in samples, name
            assert value(samples, name, **m) == pytest.approx(number), name
    assert value(samples, "process_resident_memory_bytes") > 0


def test_running_gauge_follows_the_engine(traced_server, traced_stub, timed_engine):
    port = traced_server.metrics_port
    request = pb.GenerateRequest(prompt="SLOW", stopping=pb.StoppingCriteria(max_tokens=1000))
    call = traced_stub.GenerateStream(request, timeout=TIMEOUT)
    next(call)
    try:
        assert value(scrape(port), "cyserve_requests_running", model_name=MODEL) == len(timed_engine.live) >= 1
    finally:
        call.cancel()
    assert wait_until(lambda: value(scrape(port), "cyserve_requests_running", model_name=MODEL) == 0)


def test_only_one_metrics_server_per_port(traced_server, timed_engine):
    from cyserve.service.server import ServeError

    from .support import telemetry_server

    with (pytest.raises(ServeError, match="metrics"),
          telemetry_server(timed_engine, metrics_port=traced_server.metrics_port)):
        pass


def test_scrapes_run_beside_calls(traced_server, traced_stub):
    """Scrapes come from another thread while calls are in flight; both keep working."""
    port = traced_server.metrics_port
    errors: list[BaseException] = []

    def scrape_loop() -> None:
        try:
            for _ in range(20):
                scrape(port)
        except BaseException as exc:  # noqa: BLE001  reported below, in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=scrape_loop)
    thread.start()
    for _ in range(5):
        traced_stub.Generate(pb.GenerateRequest(prompt="hi"), timeout=TIMEOUT)
    thread.join(30)
    assert not errors


def test_length_buckets_are_1_2_5():
    assert length_buckets(100) == (1, 2, 5, 10, 20, 50, 100)
    assert length_buckets(2048)[-1] == 2000


def test_metrics_off_means_no_port(timed_engine):
    from .support import telemetry_server

    with telemetry_server(timed_engine) as server:
        assert server.metrics_port is None
        assert server.telemetry.metrics is None


def test_path_is_metrics(traced_server):
    with urllib.request.urlopen(f"http://127.0.0.1:{traced_server.metrics_port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
