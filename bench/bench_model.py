"""The CPU forward pass against llama.cpp (llama-cpp-python) on the same GGUF and thread count.

Side by side in one run, systems interleaved round by round, best round kept:

1. prefill tokens/s on a `--prompt-len` (512) token prompt;
2. single-stream decode tokens/s over `--decode-len` (128) tokens after that prompt (greedy:
   each step feeds back the argmax, so both systems do the same work per token);
3. aggregate decode tokens/s with `--batch` (16) sequences decoding together (ours only: the
   target is against our own single stream, and llama-cpp-python's high-level API has no batch);
4. with `--engine`, the same decode figures through the serving engine (scheduler, sampler,
   detokenizer: the path a gRPC request takes), 1 and `--batch` streams.

With `--accuracy`, also teacher-forced top-1 agreement with transformers' fp32 forward of the
same file over the texts of tests/test_accuracy.py, for both systems (needs the test extras).

    pip install -e '.[bench]' llama-cpp-python   # llama-cpp-python builds llama.cpp (minutes)
    python bench/bench_model.py --threads 2 [--rounds 3] [--engine] [--accuracy]

Targets (issue 3): prefill and single-stream decode >= 1.0x llama.cpp; batched decode at 16
sequences >= 3x our own single stream.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from cyserve.fastpath.model.gguf_loader import load_gguf
from cyserve.fastpath.model.cpu_runner import CpuModelRunner
from cyserve.fastpath.model.batch import build_inputs
from cyserve.kernels.cpu import threads
from cyserve.service.config import default_model_path

BLOCK = 16


@dataclass
class Best:
    """Best (highest) tokens/s seen per measurement across rounds."""

    rates: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, tokens: int, seconds: float) -> None:
        self.rates[name] = max(self.rates.get(name, 0.0), tokens / seconds)


def prompt_tokens(n: int, seed: int, vocab: int) -> list[int]:
    """Ordinary (non-special) token ids; the content does not change the arithmetic."""
    return np.random.default_rng(seed).integers(300, min(vocab, 40000), n).tolist()


class Ours:
    def __init__(self, path: str, args: argparse.Namespace) -> None:
        self.model = load_gguf(path)
        self.blocks_per_seq = (args.prompt_len + args.decode_len + BLOCK - 1) // BLOCK
        self.runner = CpuModelRunner(self.model, (args.batch + 1) * self.blocks_per_seq, BLOCK)
        self.args = args

    def _blocks(self, seq: int) -> list[int]:
        return list(range(seq * self.blocks_per_seq, (seq + 1) * self.blocks_per_seq))

    def prefill(self, ids: list[int], seq: int = 0) -> np.ndarray:
        return self.runner.forward(build_inputs([(ids, 0, len(ids), self._blocks(seq), True)], BLOCK))

    def decode(self, prompts: list[list[int]], steps: int) -> float:
        """Seconds for `steps` greedy steps of every prompt's sequence batched together."""
        seqs = [list(p) + [int(self.prefill(p, i)[0].argmax())] for i, p in enumerate(prompts)]
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = [(s, len(s) - 1, 1, self._blocks(i), True) for i, s in enumerate(seqs)]
            logits = self.runner.forward(build_inputs(batch, BLOCK))
            for s, row in zip(seqs, logits):
                s.append(int(row.argmax()))
        return time.perf_counter() - t0


class LlamaCpp:
    def __init__(self, path: str, args: argparse.Namespace) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(path, n_ctx=args.prompt_len + args.decode_len + 16,
                                   n_threads=args.threads, n_threads_batch=args.threads,
                                   n_batch=args.prompt_len, n_ubatch=args.prompt_len, verbose=False)

    def prefill(self, ids: list[int]) -> float:
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids)
        elapsed = time.perf_counter() - t0
        self.settle()
        return elapsed

    @staticmethod
    def settle() -> None:
        # llama.cpp's worker threads spin for a while after each eval; whatever runs next on a
        # small machine would be measured against them
        time.sleep(2.0)

    def _argmax_last(self) -> int:
        # the context's own logits buffer (last evaluated token), read in place as ours are
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))
        return int(logits.argmax())

    def decode(self, prompt: list[int], steps: int) -> float:
        self.prefill(prompt)
        token = self._argmax_last()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.llm.eval([token])
            token = self._argmax_last()
        elapsed = time.perf_counter() - t0
        self.settle()
        return elapsed


def engine_decode(path: str, args: argparse.Namespace, streams: int, best: Best) -> None:
    from cyserve.fastpath.engine import Engine
    from cyserve.fastpath.engine_config import EngineConfig
    from cyserve.fastpath.core.request import EngineRequest, SamplingParams, StoppingParams

    engine = Engine.from_config(EngineConfig(model_path=path, num_threads=args.threads,
                                             kv_cache_bytes=256 << 20, enable_prefix_caching=False))
    engine.start()
    stop = StoppingParams(max_tokens=args.decode_len + 1, ignore_eos=True)

    async def one(i: int) -> tuple[float, float]:
        first = last = 0.0
        req = EngineRequest(f"e{streams}-{i}-{time.monotonic_ns()}", prompt_tokens(64, 100 + i, 49152),
                            SamplingParams(temperature=0.0), stop)
        async for out in engine.generate(req):
            if out.new_token_ids:
                last = time.perf_counter()
                first = first or last
        return first, last

    async def run() -> list[tuple[float, float]]:
        return await asyncio.gather(*(one(i) for i in range(streams)))

    try:
        for _ in range(args.rounds):
            spans = asyncio.run(run())
            # decode only: from the last stream's first token to the last token of all
            t0, t1 = max(s[0] for s in spans), max(s[1] for s in spans)
            best.add(f"engine decode x{streams}", streams * args.decode_len, t1 - t0)
    finally:
        engine.stop()


def accuracy(path: str, args: argparse.Namespace, ours: Ours) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import llama_cpp
    from conftest import Oracle
    from test_accuracy import case_for, texts

    from cyserve.fastpath.tokenizer import Tokenizer

    oracle = Oracle(path)
    tok = Tokenizer.from_gguf(ours.model.reader)
    llm = llama_cpp.Llama(path, n_ctx=1024, n_threads=args.threads, logits_all=True, verbose=False)
    counts = {"cyserve": 0, "llama.cpp": 0}
    total = 0
    for text in texts(case_for(ours.model.config.architecture)):
        ids = tok.with_bos(tok.encode(text))
        ref = oracle.logits(ids).argmax(-1)
        inputs = build_inputs([(ids, 0, len(ids), ours._blocks(0), True)], BLOCK)
        inputs.logits_indices = np.arange(len(ids), dtype=np.int64)
        counts["cyserve"] += int((ours.runner.forward(inputs).argmax(-1) == ref).sum())
        llm.reset()
        llm.eval(ids)
        counts["llama.cpp"] += int((np.asarray(llm.scores[: len(ids)]).argmax(-1) == ref).sum())
        total += len(ids)
    print(f"\nteacher-forced top-1 agreement with transformers fp32, {total} positions:")
    for name, same in counts.items():
        print(f"  {name:10s} {same}/{total} = {same / total:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-llama", action="store_true", help="ours only")
    ap.add_argument("--engine", action="store_true", help="also decode through the serving engine")
    ap.add_argument("--accuracy", action="store_true", help="also top-1 agreement vs transformers")
    ap.add_argument("--isas", default="", help="comma-separated instruction sets to time ours under, "
                                               "side by side (default: the one CYSERVE_ISA or the CPU picks)")
    args = ap.parse_args()

    threads.set_num_threads(args.threads)
    ours = Ours(args.model, args)
    llama = None if args.no_llama else LlamaCpp(args.model, args)
    vocab = ours.model.config.vocab_size
    prompt = prompt_tokens(args.prompt_len, 0, vocab)
    batch_prompts = [prompt_tokens(64, 1 + i, vocab) for i in range(args.batch)]
    best = Best()
    ours.prefill(prompt[:32])  # warm: page in the weights, start the OpenMP pool
    isas = [name.strip() for name in args.isas.split(",") if name.strip()] or [threads.get_isa()]
    for r in range(args.rounds):
        for isa in isas:
            threads.set_isa(isa)
            tag = f" [{isa}]" if len(isas) > 1 else ""
            t0 = time.perf_counter(); ours.prefill(prompt)
            best.add(f"cyserve prefill{tag}", len(prompt), time.perf_counter() - t0)
            best.add(f"cyserve decode x1{tag}", args.decode_len, ours.decode([prompt], args.decode_len))
            best.add(f"cyserve decode x{args.batch}{tag}", args.batch * args.decode_len,
                     ours.decode(batch_prompts, args.decode_len))
        if llama:
            best.add("llama.cpp prefill", len(prompt), llama.prefill(prompt))
            best.add("llama.cpp decode x1", args.decode_len, llama.decode(prompt, args.decode_len))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    if args.engine:
        engine_decode(args.model, args, 1, best)
        engine_decode(args.model, args, args.batch, best)

    print(f"\n{os.path.basename(args.model)}, {args.threads} threads, best of {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.2f}; instruction sets {', '.join(isas)} of "
          f"{', '.join(threads.supported_isas())})")
    print(f"{'measurement':36s} {'tok/s':>9}")
    for name, rate in best.rates.items():
        print(f"{name:36s} {rate:9.1f}")
    rates = best.rates
    print("\nratios")
    for isa in isas:
        tag = f" [{isa}]" if len(isas) > 1 else ""
        if llama:
            print(f"  prefill{tag}  cyserve / llama.cpp   "
                  f"{rates[f'cyserve prefill{tag}'] / rates['llama.cpp prefill']:.2f}x (target >= 1.0)")
            print(f"  decode{tag}   cyserve / llama.cpp   "
                  f"{rates[f'cyserve decode x1{tag}'] / rates['llama.cpp decode x1']:.2f}x (target >= 1.0)")
        print(f"  batched{tag}  x{args.batch} / x1 (cyserve)   "
              f"{rates[f'cyserve decode x{args.batch}{tag}'] / rates[f'cyserve decode x1{tag}']:.2f}x (target >= 3.0)")
    if len(isas) > 1:
        for what in ("prefill", "decode x1", f"decode x{args.batch}"):
            print(f"  {what:12s} {isas[-1]} / {isas[0]}   "
                  f"{rates[f'cyserve {what} [{isas[-1]}]'] / rates[f'cyserve {what} [{isas[0]}]']:.2f}x")
    if args.engine:
        print(f"  engine   x{args.batch} / x1                  "
              f"{rates[f'engine decode x{args.batch}'] / rates['engine decode x1']:.2f}x")
    if args.accuracy:
        accuracy(args.model, args, ours)


if __name__ == "__main__":
    main()
