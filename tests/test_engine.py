"""The engine end to end on the default model: greedy parity, batching, stops, aborts, preemption."""
import asyncio

import pytest

from cyserve.fastpath.engine import Engine, EngineConfig
from cyserve.fastpath.errors import InvalidRequestError
from cyserve.fastpath.request import EngineRequest, FinishReason, SamplingParams, StoppingParams

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


@pytest.mark.oracle
@pytest.mark.parametrize("question", ["What is the capital of France?", "Name three colors.",
                                      "Write a Python function that adds two numbers."])
def test_greedy_tokens_match_reference(engine, oracle, question):
    prompt = CHAT.format(question)
    ids = engine.tokenizer.encode(prompt)
    expected = oracle.greedy(ids, max_new_tokens=24)
    [(tokens, text, last)] = run(engine, req(engine, "g", prompt, max_tokens=24))
    assert tokens == expected
    assert last.finish_reason in (FinishReason.EOS, FinishReason.LENGTH)


def test_capital_of_france(engine):
    [(_, text, last)] = run(engine, req(engine, "paris", CHAT.format("What is the capital of France?"), 32))
    assert "Paris" in text
    assert last.finish_reason == FinishReason.EOS and "<|im_end|>" not in text


def test_batching_does_not_change_greedy_tokens(engine):
    prompts = [CHAT.format(q) for q in ("Count to five.", "What is 2+2?", "Say hello in French.",
                                        "Name a planet.", "What color is the sky?")]
    alone = [run(engine, req(engine, f"a{i}", p))[0][0] for i, p in enumerate(prompts)]
    together = run(engine, *(req(engine, f"b{i}", p) for i, p in enumerate(prompts)))
    assert [t for t, _, _ in together] == alone


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
    prompt = CHAT.format("Count from 1 to 10, separated by commas.")
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
