"""GPU benchmarks of the torch runner on the default model (SmolLM2-135M Q4_1), for a CUDA machine.

1. runner decode tokens/s at 1 and 64 streams (one token per sequence per step over a 128-token
   context), linear layers through cuBLAS on fp16 weights vs the fused dequantizing GEMV (which
   only serves batches of <= 8 rows, so it is timed at 1 stream), eager vs CUDA graphs;
2. runner prefill tokens/s for 512-token prompts;
3. the device sampler alone: rows/s from [64, vocab] GPU logits to host token ids, greedy and
   top-k/top-p;
4. engine output tokens/s at 1 and 64 concurrent streams, end to end (scheduler, device sampler,
   detokenizer included), --device cuda, without and with --cuda-graphs.

    python bench/bench_cuda.py [--steps 64] [--max-tokens 64] [--cpu-baseline]

Every number is printed with the device name. --cpu-baseline adds the CPU runner's decode and
prefill rows (same inputs) for the ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
import torch

from cyserve.fastpath.engine import Engine
from cyserve.fastpath.engine_config import EngineConfig
from cyserve.fastpath.model.gguf_loader import load_gguf
from cyserve.fastpath.model.cpu_runner import CpuModelRunner
from cyserve.fastpath.model.batch import build_inputs
from cyserve.fastpath.model.device_sampler import DeviceSampler
from cyserve.fastpath.core.request import EngineRequest, SamplingParams, StoppingParams
from cyserve.fastpath.model.cpu_sampler import seed_state
from cyserve.fastpath.core.sequence import Sequence
from cyserve.fastpath.model.torch_runner import TorchModelRunner
from cyserve.service.config import default_model_path

BLOCK_SIZE = 16
CONTEXT = 128
PREFILL_LEN = 512


def decode_rate(runner, num_streams: int, steps: int) -> float:
    """Tokens/s of `steps` decode steps for num_streams sequences whose caches hold CONTEXT tokens."""
    blocks_per_seq = (CONTEXT + steps + BLOCK_SIZE) // BLOCK_SIZE
    tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(num_streams)]
    seqs = [list(np.random.default_rng(i).integers(10, 40000, CONTEXT)) for i in range(num_streams)]
    runner.forward(build_inputs([(s, 0, CONTEXT, t, True) for s, t in zip(seqs, tables)], BLOCK_SIZE))
    for s in seqs:
        s.append(42)
    runner.forward(build_inputs([(s, len(s) - 1, 1, t, True) for s, t in zip(seqs, tables)], BLOCK_SIZE))  # warm
    t0 = time.perf_counter()
    for _ in range(steps):
        for s in seqs:
            s.append(42)
        runner.forward(build_inputs([(s, len(s) - 1, 1, t, True) for s, t in zip(seqs, tables)], BLOCK_SIZE))
    torch.cuda.synchronize()  # the torch runner's forward returns before the GPU is done
    return num_streams * steps / (time.perf_counter() - t0)


def prefill_rate(runner, repeats: int) -> float:
    tables = list(range((PREFILL_LEN + BLOCK_SIZE - 1) // BLOCK_SIZE))
    ids = list(np.random.default_rng(0).integers(10, 40000, PREFILL_LEN))
    step = build_inputs([(ids, 0, PREFILL_LEN, tables, True)], BLOCK_SIZE)
    runner.forward(step)  # warm
    t0 = time.perf_counter()
    for _ in range(repeats):
        runner.forward(step)
    torch.cuda.synchronize()
    return PREFILL_LEN * repeats / (time.perf_counter() - t0)


def sampling_rate(num_rows: int, steps: int, params: SamplingParams) -> float:
    """Rows/s the device sampler turns [num_rows, vocab] GPU logits into host token ids."""
    vocab = 49152
    seqs = [Sequence(EngineRequest(f"s{i}", [1, 2, 3], sampling=params), i, [1, 2, 3], 3, 1 << 20,
                     rng_state=seed_state(i)) for i in range(num_rows)]
    logits = torch.randn((num_rows, vocab), device="cuda") * 4
    sampler = DeviceSampler("cuda")
    sampler.sample(logits, seqs)  # warm
    t0 = time.perf_counter()
    for _ in range(steps):
        sampler.sample(logits, seqs)  # returns host ints: synchronised
    return num_rows * steps / (time.perf_counter() - t0)


def num_blocks_for(streams: int, steps: int) -> int:
    return streams * ((CONTEXT + steps + 2 * BLOCK_SIZE) // BLOCK_SIZE) + 64


async def _engine_round(engine: Engine, n: int, max_tokens: int) -> float:
    stop = StoppingParams(max_tokens=max_tokens, ignore_eos=True)
    greedy = SamplingParams(temperature=0.0)
    reqs = [EngineRequest(f"b{n}-{i}", engine.tokenizer.encode(f"Write a note about topic {i}."), greedy, stop)
            for i in range(n)]

    async def one(req: EngineRequest) -> int:
        return sum([len(out.new_token_ids) async for out in engine.generate(req)])

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(r) for r in reqs)))
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=64, help="decode steps timed per row")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request in the engine rows")
    parser.add_argument("--cpu-baseline", action="store_true", help="also time the CPU runner")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda needs a CUDA device (torch.cuda.is_available() is False)")
    device = torch.cuda.get_device_name()
    model = load_gguf(default_model_path())
    nb = num_blocks_for(64, args.steps)
    print(f"device: {device}; model {model.config.name}; context {CONTEXT}; block size {BLOCK_SIZE}")
    print(f"{'what':<56} | {'tok/s':>10}")
    rows: list[tuple[str, float]] = []
    gpu = TorchModelRunner(model, nb, BLOCK_SIZE, device="cuda")
    rows.append(("runner decode, 1 stream, cuBLAS fp16", decode_rate(gpu, 1, args.steps)))
    rows.append(("runner decode, 64 streams, cuBLAS fp16", decode_rate(gpu, 64, args.steps)))
    rows.append((f"runner prefill, {PREFILL_LEN} tokens", prefill_rate(gpu, 8)))
    del gpu
    graphed = TorchModelRunner(model, nb, BLOCK_SIZE, device="cuda")
    graphed.capture_decode_graphs(64, (CONTEXT + args.steps + BLOCK_SIZE) // BLOCK_SIZE)
    rows.append(("runner decode, 1 stream, CUDA graphs", decode_rate(graphed, 1, args.steps)))
    rows.append(("runner decode, 64 streams, CUDA graphs", decode_rate(graphed, 64, args.steps)))
    del graphed
    gemv = TorchModelRunner(model, nb, BLOCK_SIZE, device="cuda", use_gemv=True)
    rows.append(("runner decode, 1 stream, dequant GEMV", decode_rate(gemv, 1, args.steps)))
    del gemv
    greedy, nucleus = SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, top_k=50, top_p=0.9)
    rows.append(("device sampler, 64 rows, greedy (rows/s)", sampling_rate(64, args.steps, greedy)))
    rows.append(("device sampler, 64 rows, top-k 50 top-p 0.9 (rows/s)",
                 sampling_rate(64, args.steps, nucleus)))
    if args.cpu_baseline:
        cpu = CpuModelRunner(model, nb, BLOCK_SIZE)
        rows.append(("CPU runner decode, 1 stream", decode_rate(cpu, 1, min(args.steps, 16))))
        rows.append(("CPU runner decode, 64 streams", decode_rate(cpu, 64, min(args.steps, 4))))
        rows.append((f"CPU runner prefill, {PREFILL_LEN} tokens", prefill_rate(cpu, 1)))
    for name, rate in rows:
        print(f"{name:<56} | {rate:>10.1f}")
    for graphs in (False, True):
        engine = Engine.from_config(EngineConfig(model_path=default_model_path(), kv_cache_bytes=256 << 20,
                                                 max_num_seqs=64, device="cuda", cuda_graphs=graphs))
        engine.start()
        try:
            asyncio.run(_engine_round(engine, 1, 4))  # warm
            for n in (1, 64):
                what = f"engine output, {n} streams, {args.max_tokens} tokens each{', CUDA graphs' if graphs else ''}"
                print(f"{what:<56} | {asyncio.run(_engine_round(engine, n, args.max_tokens)):>10.1f}")
        finally:
            engine.stop()


if __name__ == "__main__":
    main()
