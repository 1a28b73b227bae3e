"""GFLOP/s of the CPU quantized matmul per weight format, decode (T = 1) and prefill (T = 128).

One [N, K] weight per format (random, quantized by the reference quantizers), x f32[T, K], the
time of quant_matmul.matmul (activation quantization included) as the best of `--rounds` rounds
of repeats lasting at least `--min-time` seconds each; GFLOP/s = 2 T N K / time. The K-quants sit
beside the 32-element formats. Every SIMD instruction set this CPU has is timed side by side
(or those `--isas` names), each quoted as a ratio to the first (avx2); `--scalar` adds the scalar
twin's figures (the run-time fallback without AVX2).

    python bench/bench_kquants.py --threads 2 [--n 4096 --k 4096] [--rounds 3] [--isas avx2,avx512_vnni] [--scalar]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from cyserve.kernels import reference as R
from cyserve.kernels.cpu import quant_matmul as qm
from cyserve.kernels.cpu import threads

FORMATS = [("Q4_0", R.Q4_0), ("Q4_1", R.Q4_1), ("Q8_0", R.Q8_0), ("Q5_0", R.Q5_0), ("Q5_1", R.Q5_1),
           ("Q2_K", R.Q2_K), ("Q3_K", R.Q3_K), ("Q4_K", R.Q4_K), ("Q5_K", R.Q5_K), ("Q6_K", R.Q6_K)]


def seconds_per_call(x: np.ndarray, w: np.ndarray, wtype: int, rounds: int, min_time: float) -> float:
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    qm.matmul(x, w, wtype, out)  # warm: scratch, pages, caches
    best = float("inf")
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while True:
            qm.matmul(x, w, wtype, out)
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        best = min(best, elapsed / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=4096, help="output rows N")
    ap.add_argument("--k", type=int, default=4096, help="inner dimension K (a multiple of 256)")
    ap.add_argument("--tokens", default="1,128", help="comma-separated batch sizes T")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per round")
    ap.add_argument("--scalar", action="store_true", help="also time the scalar twin")
    ap.add_argument("--isas", default="", help="comma-separated instruction sets (default: every "
                                               "SIMD one this CPU has)")
    args = ap.parse_args()
    if args.k % 256:
        ap.error("--k must be a multiple of 256 (the K-quant super-block)")
    threads.set_num_threads(args.threads)
    Ts = [int(t) for t in args.tokens.split(",")]
    rng = np.random.default_rng(0)
    W = rng.standard_normal((args.n, args.k)).astype(np.float32)
    xs = {T: rng.standard_normal((T, args.k)).astype(np.float32) for T in Ts}
    modes = [name for name in threads.supported_isas() if name != "scalar"]
    if args.isas:
        modes = [name.strip() for name in args.isas.split(",")]
    if args.scalar or not modes:
        modes.append("scalar")
    print(f"quant_matmul GFLOP/s, N={args.n} K={args.k}, {args.threads} threads, best of {args.rounds}")
    print(f"instruction sets: {', '.join(modes)} (best here: {threads.best_isa()})")
    head = "".join(f"{f'{m} T={T}':>18}" for m in modes for T in Ts)
    print(f"{'format':<8}{'bits/w':>8}{head}")
    for name, wtype in FORMATS:
        w = R.quantize(W, wtype)
        bits = 8 * w.shape[1] / args.k
        cells, rates = [], {}
        for isa in modes:
            threads.set_isa(isa)
            for T in Ts:
                s = seconds_per_call(xs[T], w, wtype, args.rounds, args.min_time)
                rates[isa, T] = 2 * T * args.n * args.k / s / 1e9
                ratio = f" ({rates[isa, T] / rates[modes[0], T]:.2f}x)" if isa != modes[0] else ""
                cells.append(f"{rates[isa, T]:>9.1f}{ratio:>9}")
        threads.set_isa("auto")
        print(f"{name:<8}{bits:>8.2f}{''.join(cells)}", flush=True)
    print(f"ratios are against {modes[0]}, the same T")


if __name__ == "__main__":
    main()
