"""Engine benchmarks on the default model (SmolLM2-135M Q4_1), in one run, side by side:

1. aggregate output tokens/s at 1, 4, 16 and 64 concurrent streams (greedy, ignore_eos, distinct
   prompts, `--max-tokens` each);
2. TTFT for 16 requests sent together that share a 400-token system prompt, prefix caching on
   versus off (two engines, same settings otherwise; each trial uses a fresh system prompt so the
   cache starts cold). Target: TTFT at least 3x lower with prefix caching.

    python bench/bench_engine.py [--threads N] [--streams 1,4,16,64] [--max-tokens 32] [--trials 2]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from cyserve.fastpath.engine import Engine
from cyserve.fastpath.engine_config import EngineConfig
from cyserve.fastpath.core.request import EngineRequest, SamplingParams, StoppingParams
from cyserve.service.config import default_model_path

GREEDY = SamplingParams(temperature=0.0)
TOPICS = ("rivers", "mountains", "the moon", "bread", "bicycles", "owls", "glass", "tea", "volcanoes", "chess",
          "whales", "paper", "copper", "rain", "bees", "maps")


def make_engine(args: argparse.Namespace, **overrides) -> Engine:
    cfg = EngineConfig(model_path=default_model_path(), num_threads=args.threads, kv_cache_bytes=args.kv_cache_bytes,
                       max_num_seqs=64, **overrides)
    engine = Engine.from_config(cfg)
    engine.start()
    return engine


async def _stream(engine: Engine, req: EngineRequest, t0: float) -> tuple[float, int]:
    """(seconds to the first token, tokens generated)."""
    ttft, n = 0.0, 0
    async for out in engine.generate(req):
        if out.new_token_ids and n == 0:
            ttft = time.perf_counter() - t0
        n += len(out.new_token_ids)
    return ttft, n


async def _run_all(engine: Engine, reqs: list[EngineRequest]) -> tuple[float, list[tuple[float, int]]]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_stream(engine, r, t0) for r in reqs))
    return time.perf_counter() - t0, results


def throughput(engine: Engine, streams: list[int], max_tokens: int) -> None:
    tok = engine.tokenizer
    stop = StoppingParams(max_tokens=max_tokens, ignore_eos=True)
    asyncio.run(_run_all(engine, [EngineRequest("warm", tok.encode("Hello"), GREEDY, stop)]))
    print(f"\n1. aggregate output tokens/s, {max_tokens} tokens per stream, greedy")
    print(f"{'streams':>8} | {'wall s':>7} | {'tokens':>7} | {'tok/s':>8} | {'vs 1 stream':>11} | mean TTFT")
    base = None
    for n in streams:
        reqs = [EngineRequest(f"t{n}-{i}", tok.encode(f"Write a short note about {TOPICS[i % len(TOPICS)]} "
                                                      f"number {i}."), GREEDY, stop) for i in range(n)]
        wall, results = asyncio.run(_run_all(engine, reqs))
        total = sum(k for _, k in results)
        rate = total / wall
        base = base or rate
        print(f"{n:>8} | {wall:7.2f} | {total:7d} | {rate:8.1f} | {rate / base:10.2f}x | "
              f"{statistics.fmean(t for t, _ in results) * 1e3:7.0f} ms")


def shared_prompt_requests(engine: Engine, trial: int, n: int = 16, system_len: int = 400) -> list[EngineRequest]:
    tok = engine.tokenizer
    text = " ".join(f"Rule {trial}.{i}: answer about {TOPICS[(i + trial) % len(TOPICS)]} politely and briefly."
                    for i in range(120))
    system = tok.encode(f"<|im_start|>system\n{text}")[:system_len]
    assert len(system) == system_len
    stop = StoppingParams(max_tokens=4, ignore_eos=True)
    return [EngineRequest(f"ttft{trial}-{i}", system + tok.encode(f"<|im_end|>\n<|im_start|>user\nTell me about "
                                                                 f"{TOPICS[i]}.<|im_end|>\n<|im_start|>assistant\n"),
                          GREEDY, stop) for i in range(n)]


def ttft(engines: dict[str, Engine], trials: int) -> None:
    print("\n2. TTFT, 16 requests sent together sharing a 400-token system prompt (cold cache each trial)")
    print(f"{'prefix cache':>12} | {'mean TTFT':>9} | {'median':>9} | {'max':>9} | {'wall s':>7} | hits/queries")
    means: dict[str, list[float]] = {name: [] for name in engines}
    for trial in range(trials):
        for name, engine in engines.items():
            before = engine.stats()
            wall, results = asyncio.run(_run_all(engine, shared_prompt_requests(engine, trial)))
            after = engine.stats()
            t = [r[0] * 1e3 for r in results]
            means[name].append(statistics.fmean(t))
            print(f"{name:>12} | {statistics.fmean(t):7.0f}ms | {statistics.median(t):7.0f}ms | {max(t):7.0f}ms | "
                  f"{wall:7.2f} | {after.prefix_cache_hits - before.prefix_cache_hits}/"
                  f"{after.prefix_cache_queries - before.prefix_cache_queries}")
    ratio = statistics.fmean(means["off"]) / statistics.fmean(means["on"])
    print(f"mean TTFT, off / on: {ratio:.2f}x (target >= 3x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="0 = the cores this process may use")
    parser.add_argument("--streams", default="1,4,16,64")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--kv-cache-bytes", type=int, default=256 << 20)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-ttft", action="store_true")
    args = parser.parse_args()
    if not args.skip_throughput:
        engine = make_engine(args)
        try:
            throughput(engine, [int(s) for s in args.streams.split(",")], args.max_tokens)
        finally:
            engine.stop()
    if not args.skip_ttft:
        engines = {"on": make_engine(args), "off": make_engine(args, enable_prefix_caching=False)}
        try:
            for engine in engines.values():  # warm both: first-call costs are not what we measure
                asyncio.run(_run_all(engine, [EngineRequest("warm", engine.tokenizer.encode("Hi"), GREEDY,
                                                            StoppingParams(max_tokens=2))]))
            ttft(engines, args.trials)
        finally:
            for engine in engines.values():
                engine.stop()


if __name__ == "__main__":
    main()
