"""Scheduler cost per step, excluding the forward pass: 256 running sequences decoding.

Each step: schedule() (pick the batch, grow block tables), the pretend forward (nothing), update()
(count tokens computed, commit full blocks to the prefix cache), append one sampled token per
sequence. schedule() and update() are timed separately; the target is under 50 us per step for both
together on the project's 2-core machine.

    python bench/bench_scheduler.py [--seqs 256] [--steps 2000] [--prompt-len 100]
"""
from __future__ import annotations

import argparse
import statistics
import time

from cyserve.fastpath.core.block_allocator import BlockAllocator
from cyserve.fastpath.core.kv_cache_manager import KVCacheManager
from cyserve.fastpath.core.request import EngineRequest
from cyserve.fastpath.core.scheduler import Scheduler
from cyserve.fastpath.core.sequence import Sequence

TARGET_US = 50.0


def build(num_seqs: int, prompt_len: int, steps: int, caching: bool, block_size: int = 16) -> Scheduler:
    tokens_per_seq = prompt_len + steps + 8
    num_blocks = num_seqs * (tokens_per_seq // block_size + 2)
    sched = Scheduler(KVCacheManager(BlockAllocator(num_blocks, block_size, caching)), num_seqs, 8192)
    for i in range(num_seqs):
        prompt = [1 + (i * 31 + j * 7) % 30000 for j in range(prompt_len)]
        req = EngineRequest(f"r{i}", prompt)
        sched.add(Sequence(req, i, list(prompt), prompt_len, 1 << 30, rng_state=i))
    while sched.waiting or any(s.num_uncomputed_tokens > 1 for s in sched.running):
        step(sched)  # prefill everything: the timed steps are pure decode
    return sched


def step(sched: Scheduler, clock=time.perf_counter_ns) -> tuple[float, float]:
    t0 = clock()
    out = sched.schedule()
    t1 = clock()
    sched.update(out)
    t2 = clock()
    for seq in out.sampling:
        seq.token_ids.append(seq.num_tokens % 1000 + 1)
    return (t1 - t0) / 1e3, (t2 - t1) / 1e3


def clock_overhead_us(clock) -> float:
    """What one interval costs the clock itself (thread_time is a system call, about 1 us)."""
    pairs = []
    for _ in range(5000):
        t0 = clock()
        pairs.append(clock() - t0)
    return statistics.median(pairs) / 1e3


def measure(num_seqs: int, prompt_len: int, steps: int, caching: bool, clock) -> dict[str, float]:
    sched = build(num_seqs, prompt_len, steps, caching)
    overhead = clock_overhead_us(clock)
    sched_us, update_us = [], []
    for _ in range(steps):
        a, b = step(sched, clock)
        sched_us.append(max(a - overhead, 0.0))
        update_us.append(max(b - overhead, 0.0))
    assert sched.last_num_scheduled_tokens == num_seqs, "every sequence decodes each step"
    total = [a + b for a, b in zip(sched_us, update_us)]
    return {"schedule_median": statistics.median(sched_us), "update_median": statistics.median(update_us),
            "total_median": statistics.median(total), "total_mean": statistics.fmean(total),
            "total_p99": sorted(total)[int(len(total) * 0.99)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--prompt-len", type=int, default=100)
    args = parser.parse_args()
    print(f"scheduler step, {args.seqs} running sequences decoding, {args.steps} steps, block size 16")
    print("wall = perf_counter (includes time the OS ran other processes); "
          "cpu = this thread's CPU time (robust on a shared machine); the clock's own cost is subtracted")
    print(f"{'clock':>5} {'prefix cache':>12} | {'schedule':>9} | {'update':>9} | {'both med':>9} | {'mean':>9} | "
          f"{'p99':>9} | mean vs {TARGET_US:.0f}us target")
    for clock_name, clock in (("wall", time.perf_counter_ns), ("cpu", time.thread_time_ns)):
        for caching in (True, False):
            r = measure(args.seqs, args.prompt_len, args.steps, caching, clock)
            print(f"{clock_name:>5} {'on' if caching else 'off':>12} | {r['schedule_median']:7.1f}us | "
                  f"{r['update_median']:7.1f}us | {r['total_median']:7.1f}us | {r['total_mean']:7.1f}us | "
                  f"{r['total_p99']:7.1f}us | {r['total_mean'] / TARGET_US:.2f}x")


if __name__ == "__main__":
    main()
