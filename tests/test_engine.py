"""The engine end to end on the default model: greedy parity, batching, stops, aborts, preemption."""
import asyncio

import pytest

from cyserve.fastpath.engine import Engine
from cyserve.fastpath.engine_config import EngineConfig
from cyserve.fastpath.errors import InvalidRequestError
from cyserve.fastpath.core.request import EngineRequest, FinishReason, SamplingParams, StoppingParams

GREEDY = SamplingParams(temperature=0.0)
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


async def collect(engine, req):
    outs = [o async for o in engine.generate(req)]
    tokens = [t for o in outs for t in o.new_token_ids]
    return tokens, "".join(o.text for o in outs), outs[-1]


def run(engine, *reqs):
    async def main():
        return await asyncio.gather(*(collect(engine, r) for r in reqs))
    return asyncio.run(main())


def req(engine, rid, prompt, max_tokens=16, sampling=GREEDY, **stop):
    return EngineRequest(rid, engine.tokenizer.encode(prompt), sampling,
                         StoppingParams(max_tokens=max_tokens, **stop))


def test_capital_of_france(engine):
    [(_, text, last)] = run(engine, req(engine, "paris", CHAT.format("What is the capital of France?"), 32))
    assert "Paris" in text
    assert last.finish_reason == FinishReason.EOS and "<|im_end|>" not in text


def test_seed_gives_the_same_sample_alone_and_batched(engine):
    s = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    prompt = CHAT.format("Tell me a story.")
    [(first, _, _)] = run(engine, req(engine, "s1", prompt, 20, s))
    again = run(engine, req(engine, "s2", prompt, 20, s), req(engine, "noise", "Hello", 20,
                                                            SamplingParams(temperature=1.0, seed=7)))
    assert again[0][0] == first
    other = run(engine, req(engine, "s3", prompt, 20, SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=99)))
    assert other[0][0] != first


def test_max_tokens_and_length_finish(engine):
    [(tokens, _, last)] = run(engine, req(engine, "len", "Once upon a time", 5, ignore_eos=True))
    assert len(tokens) == 5 and last.finish_reason == FinishReason.LENGTH
    assert last.num_completion_tokens == 5 and last.num_prompt_tokens == len(engine.tokenizer.encode("Once upon a time"))


def test_stop_string_is_withheld(engine):
    prompt = CHAT.format("List the numbers from 1 to 10, separated by commas.")
    [(_, full, _)] = run(engine, req(engine, "full", prompt, 40))
    assert "4" in full, f"test premise: the model counts ({full!r})"
    [(_, text, last)] = run(engine, req(engine, "stop", prompt, 40, stop=("4",)))
    assert last.finish_reason == FinishReason.STOP_SEQUENCE and last.stop_sequence == "4"
    assert text == full[: full.index("4")]


def test_bad_requests_raise_with_the_field(engine):
    async def first(r):
        async for _ in engine.generate(r):
            pass
    cases = [
        (EngineRequest("e1", []), "prompt"),
        (EngineRequest("e2", [1, 10**6]), "prompt_token_ids"),
        (EngineRequest("e3", [1] * engine.max_model_len), "prompt"),
        (EngineRequest("e4", [1, 2], stopping=StoppingParams(max_tokens=0)), "stopping.max_tokens"),
        (EngineRequest("e5", [1, 2], SamplingParams(logit_bias=((10**6, 1.0),))), "sampling.logit_bias"),
    ]
    for r, field in cases:
        with pytest.raises(InvalidRequestError) as e:
            asyncio.run(first(r))
        assert e.value.field == field
    assert engine.stats().num_free_blocks == engine.stats().num_total_blocks


def test_abort_midway_frees_every_block(engine):
    async def main():
        gen = engine.generate(req(engine, "abort-me", "Tell me everything about the ocean.", 200, ignore_eos=True))
        got = 0
        async for _ in gen:
            got += 1
            if got == 3:
                break
        await gen.aclose()
        for _ in range(200):
            if engine.stats().num_running == 0:
                break
            await asyncio.sleep(0.01)
    asyncio.run(main())
    s = engine.stats()
    assert s.num_running == 0 and s.num_waiting == 0 and s.num_free_blocks == s.num_total_blocks


def test_preempted_requests_recompute_to_the_same_tokens(model_path):
    small = Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=8 * 368640, max_num_seqs=8))
    small.start()
    try:
        prompts = [CHAT.format(q) for q in ("Describe a cat.", "Describe a dog.", "Describe a bird.")]
        alone = [run(small, req(small, f"a{i}", p, 40, ignore_eos=True))[0][0] for i, p in enumerate(prompts)]
        together = run(small, *(req(small, f"b{i}", p, 40, ignore_eos=True) for i, p in enumerate(prompts)))
        assert small.stats().num_preemptions > 0, "test premise: the cache is too small for all three at once"
        assert [t for t, _, _ in together] == alone
        assert small.stats().num_free_blocks == small.stats().num_total_blocks
    finally:
        small.stop()


# ---- prefix caching, chunked prefill, limits, counters ----------------------------------------

SYSTEM = ("<|im_start|>system\nYou are a careful assistant. Answer briefly and precisely, in plain "
          "English, without lists. Never invent facts; say when you do not know.<|im_end|>\n")
SHARED_QUESTIONS = ("What is the capital of Italy?", "Name a large mammal.", "What is 3+4?")


def shared_prompt(q: str) -> str:
    return SYSTEM + CHAT.format(q)


@pytest.fixture(scope="module", params=["no_prefix_cache", "chunked_prefill"])
def variant(request, model_path):
    """A small engine differing from the session one in one scheduling setting."""
    cfg = {"no_prefix_cache": dict(enable_prefix_caching=False),
           "chunked_prefill": dict(max_num_batched_tokens=16)}[request.param]
    eng = Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=32 << 20, **cfg))
    eng.start()
    yield eng
    eng.stop()


def test_scheduling_settings_do_not_change_greedy_tokens(engine, variant):
    before = engine.stats()
    reference = [run(engine, req(engine, f"p{i}", shared_prompt(q), 12))[0] for i, q in enumerate(SHARED_QUESTIONS)]
    after = engine.stats()
    assert after.prefix_cache_hits > before.prefix_cache_hits, "test premise: the system prompt is shared"
    assert reference[-1][2].num_cached_tokens >= 32
    got = [run(variant, req(variant, f"v{i}", shared_prompt(q), 12))[0] for i, q in enumerate(SHARED_QUESTIONS)]
    assert [t for t, _, _ in got] == [t for t, _, _ in reference]
    s = variant.stats()
    if not variant.config.enable_prefix_caching:
        assert s.prefix_cache_hits == 0 and s.num_cached_blocks == 0
    else:
        assert s.num_scheduled_tokens_last_step <= 16 and s.num_steps > s.num_scheduled_tokens_total / 16
    assert s.num_free_blocks == s.num_total_blocks and s.num_used_blocks == 0


def test_concurrent_requests_match_each_run_alone(engine):
    """Shared prefixes, identical prompts and different lengths in one batch change no token."""
    specs = [(shared_prompt("Name a large mammal."), 10), (shared_prompt("Name a small bird."), 14),
             (CHAT.format("Count to five."), 12), (CHAT.format("Count to five."), 12),
             (shared_prompt("What is 3+4?"), 6), (CHAT.format("Say hello in French."), 16),
             ("Once upon a time", 9), (shared_prompt("Name a planet."), 11)]
    alone = [run(engine, req(engine, f"solo{i}", p, n))[0][0] for i, (p, n) in enumerate(specs)]
    together = run(engine, *(req(engine, f"many{i}", p, n) for i, (p, n) in enumerate(specs)))
    assert [t for t, _, _ in together] == alone
    s = engine.stats()
    assert s.num_running == 0 and s.num_free_blocks == s.num_total_blocks


def test_abort_from_another_thread_ends_the_stream(engine):
    import threading

    async def main():
        outs = []
        async for out in engine.generate(req(engine, "far-abort", "Tell me about rivers.", 500, ignore_eos=True)):
            outs.append(out)
            if len(outs) == 2:
                threading.Thread(target=engine.abort, args=("far-abort",)).start()
        return outs
    outs = asyncio.run(main())
    assert outs[-1].finished and outs[-1].finish_reason == FinishReason.CANCELLED
    assert len(outs) < 100
    s = engine.stats()
    assert s.num_running == 0 and s.num_free_blocks == s.num_total_blocks


def test_last_output_carries_timings_and_cached_tokens(engine):
    [(_, _, last)] = run(engine, req(engine, "timed", shared_prompt("What is 3+4?"), 4))
    t = last.timings
    assert t is not None and 0 < t.arrival <= t.first_scheduled <= t.first_token <= t.finished
    assert t.num_prefill_chunks >= 1 and t.num_cached_prompt_tokens == last.num_cached_tokens > 0


def test_max_model_len_is_enforced_up_front(engine, model_path):
    small = Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=8 << 20, max_model_len=48))
    small.start()
    try:
        assert small.max_model_len == small.model_info.max_model_len == 48
        with pytest.raises(InvalidRequestError) as e:
            run(small, EngineRequest("too-long", [1] * 48, GREEDY))
        assert e.value.field == "prompt" and "48" in e.value.message
        [(tokens, _, last)] = run(small, EngineRequest("fits", [1] * 40, GREEDY, StoppingParams(max_tokens=50,
                                                                                            ignore_eos=True)))
        assert len(tokens) == 8 and last.finish_reason == FinishReason.LENGTH
    finally:
        small.stop()


@pytest.mark.parametrize("cfg, problem", [(dict(max_model_len=10**6), "context length"),
                                          (dict(kv_cache_bytes=1 << 20, max_model_len=4096), "kv-cache-bytes"),
                                          (dict(kv_cache_bytes=1000), "less than one KV block")])
def test_impossible_configurations_fail_at_startup(engine, model_path, cfg, problem):
    from cyserve.fastpath.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=problem):
        Engine(EngineConfig(model_path=model_path, **cfg), engine.model, engine.tokenizer)
