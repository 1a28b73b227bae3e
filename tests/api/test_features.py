"""The API's features against the real engine: n, GenerateBatch, stopping and output options,
logprobs, penalties, echoed parameters, timings, and the small RPCs."""
from __future__ import annotations

from collections import defaultdict

from cyserve.v1 import generation_pb2 as pb

S, T = pb.SamplingParams, pb.StoppingCriteria
PROMPT = "The capital of France is"


def _stream(stub, **kw) -> list[pb.GenerateResponse]:
    return list(stub.GenerateStream(pb.GenerateRequest(prompt=PROMPT, **kw), timeout=120))


def _greedy_ids(stub, n: int = 6, **stopping) -> list[int]:
    response = stub.Generate(pb.GenerateRequest(
        prompt=PROMPT, sampling=S(temperature=0), stopping=T(max_tokens=n, ignore_eos=True, **stopping)),
        timeout=120)
    return list(response.token_ids)


def test_n_completions_are_indexed_and_reproducible_from_their_seeds(api_stub):
    responses = _stream(api_stub, sampling=S(n=3, seed=1234, temperature=1.0), stopping=T(max_tokens=5))
    by_index: dict[int, list[int]] = defaultdict(list)
    for r in responses:
        by_index[r.index].extend(r.token_ids)
    assert sorted(by_index) == [0, 1, 2]
    firsts = {r.index: r.params for r in responses if r.HasField("params")}
    assert sorted(firsts) == [0, 1, 2] and {p.sampling.seed for p in firsts.values()} == {1234, 1235, 1236}
    for i, ids in by_index.items():
        alone = api_stub.Generate(pb.GenerateRequest(
            prompt=PROMPT, sampling=S(seed=1234 + i, temperature=1.0), stopping=T(max_tokens=5)), timeout=120)
        assert list(alone.token_ids) == ids, f"completion {i} differs from its seed run alone"


def test_generate_batch_tags_prompt_and_completion(api_stub):
    batch = pb.GenerateBatchRequest(requests=[
        pb.GenerateRequest(prompt="One", stopping=T(max_tokens=3)),
        pb.GenerateRequest(prompt="Two", sampling=S(n=2), stopping=T(max_tokens=3)),
    ])
    finals = [(r.prompt_index, r.index) for r in api_stub.GenerateBatch(batch, timeout=120)
              if r.finish_reason != pb.FINISH_REASON_UNSPECIFIED]
    assert sorted(finals) == [(0, 0), (1, 0), (1, 1)]


def test_resolved_params_usage_and_timings(api_stub):
    responses = _stream(api_stub, sampling=S(temperature=0), stopping=T(max_tokens=4), priority=3)
    first, last = responses[0], responses[-1]
    assert first.HasField("params") and not any(r.HasField("params") for r in responses[1:])
    assert first.params.sampling.temperature == 0 and first.params.stopping.max_tokens == 4
    assert first.params.sampling.top_p == 1.0 and first.params.priority == 3
    assert last.usage.prompt_tokens == first.params.prompt_tokens > 0
    assert last.usage.completion_tokens == sum(len(r.token_ids) for r in responses)
    assert last.timings.total_s >= last.timings.time_to_first_token_s > 0
    assert last.timings.queue_s >= 0


def test_stop_token_ids_min_tokens_and_include_stop(api_stub):
    ids = _greedy_ids(api_stub)
    stop = ids[2]
    r = api_stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=S(temperature=0),
                                             stopping=T(max_tokens=6, stop_token_ids=[stop])), timeout=120)
    assert r.finish_reason == pb.FINISH_REASON_STOP_TOKEN and r.stop_token_id == stop
    assert list(r.token_ids) == ids[:ids.index(stop) + 1]
    masked = _greedy_ids(api_stub, 3, stop_token_ids=[ids[0]], min_tokens=1)
    assert masked[0] != ids[0], "a stop token must be masked until min_tokens"
    # include_stop keeps the matched stop string
    text = api_stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=S(temperature=0),
                                                stopping=T(max_tokens=6, ignore_eos=True)), timeout=120).text
    word = text.strip().split()[0]
    with_stop = api_stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=S(temperature=0), stopping=T(
        max_tokens=6, stop=[word], include_stop=True)), timeout=120)
    assert with_stop.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE and with_stop.text.endswith(word)


def test_logprobs_of_greedy_tokens(api_stub):
    responses = _stream(api_stub, sampling=S(temperature=0), stopping=T(max_tokens=4, ignore_eos=True),
                        output=pb.OutputOptions(logprobs=3))
    ids = [t for r in responses for t in r.token_ids]
    lps = [lp for r in responses for lp in r.logprobs]
    assert [lp.token_id for lp in lps] == ids
    for lp in lps:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        assert lp.top_logprobs[0].token_id == lp.token_id  # greedy picks the most likely
        assert abs(lp.top_logprobs[0].logprob - lp.logprob) < 1e-6
        assert [t.logprob for t in lp.top_logprobs] == sorted((t.logprob for t in lp.top_logprobs), reverse=True)


def test_logit_bias_and_penalties_change_the_choice(api_stub):
    ids = _greedy_ids(api_stub, 4)
    banned = _stream(api_stub, sampling=S(temperature=0, logit_bias={ids[0]: -100.0}),
                     stopping=T(max_tokens=1, ignore_eos=True))
    assert banned[-1].token_ids[0] != ids[0] if banned[-1].token_ids else banned[0].token_ids[0] != ids[0]
    penalised = api_stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=S(
        temperature=0, repetition_penalty=1.3, presence_penalty=1.0, frequency_penalty=1.0, min_p=0.05),
        stopping=T(max_tokens=4, ignore_eos=True)), timeout=120)
    assert penalised.usage.completion_tokens == 4


def test_time_limit_ends_with_what_was_generated(api_stub, engine):
    r = api_stub.Generate(pb.GenerateRequest(prompt=PROMPT, stopping=T(
        max_tokens=400, ignore_eos=True, max_time_s=0.3)), timeout=120)
    assert r.finish_reason == pb.FINISH_REASON_TIME_LIMIT
    assert r.usage.completion_tokens < 400 and r.usage.completion_tokens == len(r.token_ids)


def test_detokenize_render_chat_and_capabilities(api_stub, engine):
    ids = api_stub.Tokenize(pb.TokenizeRequest(text="Hello world"), timeout=30).token_ids
    assert api_stub.Detokenize(pb.DetokenizeRequest(token_ids=ids), timeout=30).text == "Hello world"
    chat = api_stub.RenderChat(pb.RenderChatRequest(messages=[pb.ChatMessage(role="user", content="Hi")]),
                               timeout=30)
    assert "Hi" in chat.prompt
    assert list(chat.token_ids) == list(api_stub.Tokenize(pb.TokenizeRequest(text=chat.prompt), timeout=30).token_ids)
    caps = api_stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert caps.max_model_len == engine.model_info.max_model_len and caps.max_prompt_tokens == 200
    assert caps.chat and caps.prompt_logprobs and not caps.tls and not caps.auth_required
    assert caps.max_message_bytes == 64 << 10
