"""The benchmark's requests: prompts of a chosen length in the served model's tokens.

Prompts are English words picked at random, measured with the server's own tokenizer (cyserve's
`Tokenize` RPC or an OpenAI-compatible server's `/tokenize`), then padded or trimmed word by
word until they are exactly the length asked for. Plain words rather than random token ids: a
client cannot detokenize over the API, and random ids decode to text that re-tokenizes to a
different length. Each request's own part starts with different words, so a prefix cache only
ever shares the explicit `--shared-prefix-len` prefix.
"""
from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

TokenCounter = Callable[[str], Awaitable[int]]

WORDS = (
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "education foot boy age policy music market sense nation plan college interest death "
    "experience effect class control care field development role effort rate heart drug show "
    "leader light voice wife police mind price report decision son view relationship town road "
    "arm difference value building action model season society tax director position player "
    "record paper space ground form event official matter center couple site project activity "
    "star table need court oil situation cost industry figure street image phone data picture "
    "practice piece land product doctor wall patient worker news test movie north love support "
    "technology step baby computer type attention film tree source organization hair window "
    "evidence population river bank summer garden network bird sound stone ocean winter forest"
).split()

MEASURE_CONCURRENCY = 16  # Tokenize calls in flight while measuring the words
MAX_FIT_ROUNDS = 8  # tokenize-and-adjust rounds per prompt; words almost always add up exactly


@dataclass(frozen=True)
class SampleRequest:
    """One request of the workload."""

    prompt: str
    prompt_len: int  # tokens, as the server's tokenizer counts them
    output_len: int  # max_tokens; with ignore_eos the server generates exactly this many


@dataclass(frozen=True)
class WorkloadSpec:
    num_requests: int
    input_len: int  # tokens of each request's own part
    output_len: int
    range_ratio: float = 0.0  # lengths drawn uniformly from [L*(1-r), L*(1+r)]; 0 = fixed
    shared_prefix_len: int = 0  # tokens of one prefix common to every request
    seed: int = 0

    @property
    def max_prompt_len(self) -> int:
        return self.shared_prefix_len + math.ceil(self.input_len * (1 + self.range_ratio))

    @property
    def max_output_len(self) -> int:
        return math.ceil(self.output_len * (1 + self.range_ratio))


def sample_lengths(mean: int, range_ratio: float, count: int, rng: random.Random) -> list[int]:
    """`count` integers uniform in [floor(mean*(1-r)), ceil(mean*(1+r))], each at least 1."""
    low = max(1, math.floor(mean * (1 - range_ratio)))
    high = max(low, math.ceil(mean * (1 + range_ratio)))
    return [rng.randint(low, high) for _ in range(count)]


class PromptBuilder:
    """Builds texts of an exact token length with a server's tokenizer."""

    def __init__(self, count_tokens: TokenCounter) -> None:
        self._count = count_tokens
        self._word_cost: dict[str, int] = {}
        self._one_token_words: list[str] = []
        self._empty_cost = 0

    async def prepare(self) -> None:
        """Measures every word once (with its leading space, as it appears inside a prompt)."""
        self._empty_cost = await self._count("")  # a BOS the server adds, if any
        limit = asyncio.Semaphore(MEASURE_CONCURRENCY)

        async def measure(word: str) -> int:
            async with limit:
                return await self._count(" " + word)

        costs = await asyncio.gather(*(measure(word) for word in WORDS))
        for word, cost in zip(WORDS, costs):
            self._word_cost[word] = max(1, cost - self._empty_cost)
        self._one_token_words = [w for w, cost in self._word_cost.items() if cost == 1]
        if not self._one_token_words:
            raise RuntimeError("the tokenizer splits every benchmark word; cannot size prompts")

    async def build(self, num_tokens: int, rng: random.Random) -> tuple[str, int]:
        """A prompt of `num_tokens` tokens (or as near as the tokenizer allows) and its length."""
        words: list[str] = []
        estimate = self._empty_cost
        while estimate < num_tokens:
            word = rng.choice(WORDS if num_tokens - estimate > 4 else self._one_token_words)
            words.append(word)
            estimate += self._word_cost[word]
        actual = await self._count(_join(words))
        for _ in range(MAX_FIT_ROUNDS):
            if actual == num_tokens:
                break
            if actual > num_tokens:
                excess = actual - num_tokens
                while words and excess > 0:
                    excess -= self._word_cost[words.pop()]
            else:
                words += [rng.choice(self._one_token_words) for _ in range(num_tokens - actual)]
            actual = await self._count(_join(words))
        return _join(words), actual


async def build_workload(spec: WorkloadSpec, count_tokens: TokenCounter) -> list[SampleRequest]:
    """The requests of `spec`, the same for every system given the same seed and tokenizer."""
    rng = random.Random(spec.seed)
    builder = PromptBuilder(count_tokens)
    await builder.prepare()
    prefix = ""
    if spec.shared_prefix_len > 0:
        prefix, _ = await builder.build(spec.shared_prefix_len, rng)
    input_lens = sample_lengths(spec.input_len, spec.range_ratio, spec.num_requests, rng)
    output_lens = sample_lengths(spec.output_len, spec.range_ratio, spec.num_requests, rng)
    requests = []
    for input_len, output_len in zip(input_lens, output_lens):
        own, own_len = await builder.build(input_len, rng)
        prompt = prefix + own
        # measured whole: a prefix and its continuation need not tokenize to the sum of both
        prompt_len = await count_tokens(prompt) if prefix else own_len
        requests.append(SampleRequest(prompt, prompt_len, output_len))
    return requests


def _join(words: list[str]) -> str:
    # every word carries its leading space, so the text is the sum of the measured pieces
    return "".join(" " + w for w in words)
