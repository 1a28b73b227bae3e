"""Structured output's cost on the engine, default model (SmolLM2-135M Q4_1), in one run, side by
side: aggregate output tokens/s at 1 and 16 concurrent streams with every request constrained by
the same JSON schema, against the same requests unconstrained. Target: constrained at 16 streams
at most 10% slower (ratio >= 0.90).

Both sides generate the same number of tokens per request, so only the constraint differs: a
warm-up pass runs the constrained requests once (greedy, so every later pass repeats it; this also
compiles the schema, which the grammar cache then keeps, as a server serving one schema does),
and each unconstrained request gets max_tokens = its constrained twin's length with ignore_eos.
Rounds alternate which side goes first; the table shows every round and the best of each side.

    python bench/bench_structured.py [--threads N] [--streams 1,16] [--rounds 5] [--items 12]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from cyserve.fastpath.core.request import EngineRequest, SamplingParams, StoppingParams
from cyserve.fastpath.engine import Engine
from cyserve.fastpath.engine_config import EngineConfig
from cyserve.fastpath.structured.constraint import Constraint
from cyserve.service.config import default_model_path

GREEDY = SamplingParams(temperature=0.0)
TOPICS = ("rivers", "mountains", "the moon", "bread", "bicycles", "owls", "glass", "tea", "volcanoes", "chess",
          "whales", "paper", "copper", "rain", "bees", "maps")
TARGET = 0.90


def schema(num_items: int) -> dict:
    """A record with a bounded, fairly long output: a name, a flag and `num_items` small integers,
    so that strings, literals, numbers and an array all go through the matcher."""
    return {"type": "object", "properties": {
        "topic": {"type": "string", "maxLength": 16},
        "ok": {"type": "boolean"},
        "values": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999},
                   "minItems": num_items, "maxItems": num_items}},
        "required": ["topic", "ok", "values"]}


def prompts(engine: Engine, n: int) -> list[list[int]]:
    return [engine.tokenizer.encode(
        f"<|im_start|>user\nGive {TOPICS[i % len(TOPICS)]} (record {i}) as JSON with a topic, a flag and "
        f"some numbers.<|im_end|>\n<|im_start|>assistant\n") for i in range(n)]


async def _tokens(engine: Engine, req: EngineRequest) -> list[int]:
    tokens: list[int] = []
    async for out in engine.generate(req):
        tokens.extend(out.new_token_ids)
    return tokens


async def _run_all(engine: Engine, reqs: list[EngineRequest]) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    outputs = await asyncio.gather(*(_tokens(engine, r) for r in reqs))
    return time.perf_counter() - t0, list(outputs)


class Workload:
    """One stream count's constrained requests and their length-matched unconstrained twins."""

    _ids = 0

    def __init__(self, engine: Engine, n: int, num_items: int, max_tokens: int) -> None:
        self.engine, self.n, self.max_tokens = engine, n, max_tokens
        self.constraint = Constraint("json_schema", json.dumps(schema(num_items)))
        self.prompts = prompts(engine, n)
        _, outputs = asyncio.run(_run_all(engine, self.requests("constrained")))  # warm-up
        for tokens in outputs:  # the constraint is really applied: each output is a whole record
            record = json.loads(engine.tokenizer.decode(tokens, skip_special=True))
            assert len(record["values"]) == num_items, record
        self.lengths = [len(t) for t in outputs]

    def requests(self, side: str) -> list[EngineRequest]:
        Workload._ids += 1
        if side == "constrained":
            stop = [StoppingParams(max_tokens=self.max_tokens)] * self.n
            return [EngineRequest(f"c{Workload._ids}-{i}", p, GREEDY, s, constraint=self.constraint)
                    for i, (p, s) in enumerate(zip(self.prompts, stop))]
        return [EngineRequest(f"u{Workload._ids}-{i}", p, GREEDY, StoppingParams(max_tokens=k, ignore_eos=True))
                for i, (p, k) in enumerate(zip(self.prompts, self.lengths))]

    def measure(self, side: str) -> float:
        wall, outputs = asyncio.run(_run_all(self.engine, self.requests(side)))
        counts = [len(t) for t in outputs]
        assert counts == self.lengths, f"{side}: {counts} tokens, expected {self.lengths}"
        return sum(counts) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="0 = the cores this process may use")
    parser.add_argument("--streams", default="1,16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=12, help="integers in the schema's array (output length)")
    parser.add_argument("--max-tokens", type=int, default=128, help="cap on a constrained output")
    parser.add_argument("--kv-cache-bytes", type=int, default=256 << 20)
    args = parser.parse_args()
    engine = Engine.from_config(EngineConfig(model_path=default_model_path(), num_threads=args.threads or None,
                                             kv_cache_bytes=args.kv_cache_bytes, max_num_seqs=64))
    engine.start()
    try:
        workloads = [Workload(engine, int(n), args.items, args.max_tokens) for n in args.streams.split(",")]
        print(f"aggregate output tokens/s, greedy, every constrained request on the same JSON schema "
              f"({args.items} array items); unconstrained twins length-matched")
        print(f"{'streams':>7} | {'tokens':>6} | {'round':>5} | {'constrained':>11} | {'unconstrained':>13} | ratio")
        best: dict[int, dict[str, float]] = {w.n: {"constrained": 0.0, "unconstrained": 0.0} for w in workloads}
        for r in range(args.rounds):
            for w in workloads:
                order = ("constrained", "unconstrained") if r % 2 == 0 else ("unconstrained", "constrained")
                rate = {side: w.measure(side) for side in order}
                for side, value in rate.items():
                    best[w.n][side] = max(best[w.n][side], value)
                print(f"{w.n:>7} | {sum(w.lengths):>6} | {r + 1:>5} | {rate['constrained']:11.1f} | "
                      f"{rate['unconstrained']:13.1f} | {rate['constrained'] / rate['unconstrained']:.3f}")
        print("best of the rounds:")
        for w in workloads:
            c, u = best[w.n]["constrained"], best[w.n]["unconstrained"]
            verdict = f" (target >= {TARGET:.2f}: {'met' if c / u >= TARGET else 'MISSED'})" if w.n == 16 else ""
            print(f"{w.n:>7} streams: constrained {c:.1f} tok/s, unconstrained {u:.1f} tok/s, "
                  f"ratio {c / u:.3f}{verdict}")
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
