"""The OpenAI-compatible HTTP API with the official `openai` client against a real server on
127.0.0.1 (the session's engine): chat and text completions, streamed and not, n, logprobs, stop
strings, seeds, token-id prompts, /v1/models and /health; plus the raw SSE wire format."""
from __future__ import annotations

import json

import httpx
import pytest

CHAT = [{"role": "user", "content": "What is the capital of Germany?"}]  # README's example


def test_models_lists_the_served_model(openai_client, http_api, model_name):
    (model,) = openai_client.models.list().data
    assert model.id == model_name and model.object == "model" and model.owned_by == "cyserve"
    assert openai_client.models.retrieve(model_name).id == model_name
    assert httpx.get(http_api.http_address + "/health").json() == {"status": "ok"}


def test_chat_completion_answers_with_usage(openai_client, model_name):
    r = openai_client.chat.completions.create(model=model_name, messages=CHAT, max_tokens=10,
                                              temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == model_name
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert "Berlin" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 1 <= r.usage.completion_tokens <= 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_the_same_prompt_again_reports_cached_tokens(openai_client, model_name):
    messages = [{"role": "user", "content": "Name three colours of the rainbow, please. " * 3}]
    for _ in range(2):
        r = openai_client.chat.completions.create(model=model_name, messages=messages, max_tokens=1)
    assert r.usage.prompt_tokens_details.cached_tokens >= 16  # at least one full block


def test_max_completion_tokens_bounds_the_output(openai_client, model_name):
    r = openai_client.chat.completions.create(model=model_name, messages=CHAT, max_completion_tokens=2,
                                              temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 2 and r.choices[0].finish_reason == "length"


def test_streamed_chat_matches_the_whole_answer(openai_client, model_name):
    kwargs = dict(model=model_name, messages=CHAT, max_tokens=6, temperature=0)
    whole = openai_client.chat.completions.create(**kwargs)
    chunks = list(openai_client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    *content, usage = chunks
    assert usage.choices == [] and usage.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in content)


def _events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line]


def test_the_event_stream_is_openai_s_wire_format(http_api, model_name):
    body = {"model": model_name, "messages": CHAT, "max_tokens": 3, "stream": True, "temperature": 0}
    with httpx.stream("POST", http_api.http_address + "/v1/chat/completions", json=body,
                      timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"]
    assert all("usage" not in c for c in chunks)  # only with include_usage
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_n_2_gives_two_choices_each_streamed_in_order(openai_client, model_name):
    r = openai_client.chat.completions.create(model=model_name, messages=CHAT, max_tokens=4, n=2,
                                              temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1]
    assert 2 <= r.usage.completion_tokens <= 8  # both completions counted
    stream = list(openai_client.chat.completions.create(
        model=model_name, messages=CHAT, max_tokens=4, n=2, temperature=1.0, seed=7, stream=True))
    texts = {0: "", 1: ""}
    roles = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.index)
            texts[choice.index] += choice.delta.content or ""
    assert sorted(roles) == [0, 1]
    assert [texts[0], texts[1]] == [c.message.content for c in r.choices]  # the same seed


def test_a_seed_reproduces_the_sample(openai_client, model_name):
    kwargs = dict(model=model_name, messages=CHAT, max_tokens=8, temperature=1.5, seed=12345)
    first = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    again = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == again


def test_chat_logprobs_carry_token_text_and_alternatives(openai_client, model_name):
    r = openai_client.chat.completions.create(model=model_name, messages=CHAT, max_tokens=4,
                                              temperature=0, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert "".join(e.token for e in entries) == r.choices[0].message.content
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3 and e.bytes == list(e.token.encode())
        assert e.logprob == pytest.approx(max(t.logprob for t in e.top_logprobs))  # greedy


def test_a_stop_string_ends_the_answer_before_it(openai_client, model_name):
    kwargs = dict(model=model_name, prompt="The capital of France is", max_tokens=8, temperature=0)
    free = openai_client.completions.create(**kwargs).choices[0].text
    cut = free.strip().split()[1]  # a word the model writes after the first one
    r = openai_client.completions.create(**kwargs, stop=[cut, "unlikely-stop"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == free[:free.index(cut)]


def test_text_completion_streamed_and_with_logprobs(openai_client, model_name):
    kwargs = dict(model=model_name, prompt="The capital of France is", max_tokens=5, temperature=0)
    whole = openai_client.completions.create(**kwargs, logprobs=2)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    lp = whole.choices[0].logprobs
    assert "".join(lp.tokens) == whole.choices[0].text
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(lp.tokens)
    assert lp.text_offset[0] == 0 and all(len(t) <= 2 for t in lp.top_logprobs)
    chunks = list(openai_client.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_prompts_as_token_ids_and_several_prompts(openai_client, model_name, engine):
    text = "The capital of France is"
    ids = engine.tokenizer.encode(text)
    by_text = openai_client.completions.create(model=model_name, prompt=text, max_tokens=3, temperature=0)
    by_ids = openai_client.completions.create(model=model_name, prompt=ids, max_tokens=3, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    several = openai_client.completions.create(model=model_name, prompt=[text, "1, 2, 3,"], max_tokens=3,
                                               temperature=0, n=2)
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    assert several.choices[0].text == several.choices[1].text == by_text.choices[0].text
    assert several.usage.prompt_tokens == len(ids) + len(engine.tokenizer.encode("1, 2, 3,"))


def test_vllm_extensions_and_user_are_accepted(openai_client, model_name):
    r = openai_client.chat.completions.create(
        model=model_name, messages=[{"role": "developer", "content": "Be brief."},
                                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        max_tokens=3, user="someone", presence_penalty=0.5, frequency_penalty=0.5,
        logit_bias={"42": -100}, extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1})
    assert r.choices[0].message.content
