"""Builds the runner for the engine's device and sizes its KV cache: the CPU runner in a host
memory budget, or the torch runner in what the GPU has left after its weights and one measured
step. Same block ids either way; the engine only sees `RunnerSetup`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from cyserve.fastpath.engine_config import EngineConfig, default_kv_cache_bytes, gpu_kv_cache_bytes
from cyserve.fastpath.errors import ModelLoadError
from cyserve.fastpath.model.cpu_runner import CpuModelRunner
from cyserve.fastpath.model.runner import ModelRunner, kv_bytes_per_block
from cyserve.fastpath.model.weights import ModelWeights

log = structlog.get_logger("cyserve.engine")

# (bytes_per_token, context_length) -> (budget bytes, what to change when it is too small)
DeviceBudget = Callable[[int, int], tuple[int, str]]


@dataclass(frozen=True)
class RunnerSetup:
    runner: ModelRunner
    num_blocks: int
    max_model_len: int


def make_runner(cfg: EngineConfig, model: ModelWeights, device: str) -> RunnerSetup:
    """The runner for `device` ("cpu", or a torch device such as "cuda")."""
    log.info("device", device=device)
    if device == "cpu":
        return cpu_runner(cfg, model)
    return torch_runner(cfg, model, device)


def cpu_runner(cfg: EngineConfig, model: ModelWeights) -> RunnerSetup:
    num_blocks, max_model_len = kv_cache_blocks(cfg, model)
    # the work buffers are sized for the step's token budget once, never grown mid-run
    runner = CpuModelRunner(model, num_blocks, cfg.block_size, max_num_tokens=cfg.max_num_batched_tokens)
    return RunnerSetup(runner, num_blocks, max_model_len)


def torch_runner(cfg: EngineConfig, model: ModelWeights, device: str) -> RunnerSetup:
    """The GPU path (on any torch device): weights first, then a step measured, then the KV cache
    in what is left."""
    from cyserve.fastpath.model.torch_runner import TorchModelRunner  # torch: GPU deployments only

    runner = TorchModelRunner(model, 0, cfg.block_size, device=device)
    num_blocks, max_model_len = kv_cache_blocks(cfg, model, lambda per_token, ctx: _gpu_budget(cfg, runner, per_token, ctx))
    runner.allocate_kv_cache(num_blocks)
    if cfg.cuda_graphs:
        _capture_graphs(cfg, model, runner, max_model_len)
    return RunnerSetup(runner, num_blocks, max_model_len)


def kv_cache_blocks(cfg: EngineConfig, model: ModelWeights, device_budget: DeviceBudget | None = None) -> tuple[int, int]:
    """(blocks, max_model_len) from the byte budget: kv_cache_bytes when set, else the device's
    budget (GPU) or the host-memory default. max_model_len never exceeds what the cache holds."""
    block_bytes = kv_bytes_per_block(model.config, cfg.block_size)
    ctx = model.config.context_length
    if cfg.kv_cache_bytes:
        budget, why = cfg.kv_cache_bytes, "raise --kv-cache-bytes"
    elif device_budget is not None:
        budget, why = device_budget(block_bytes // cfg.block_size, ctx)
    else:
        budget, why = default_kv_cache_bytes(cfg, block_bytes // cfg.block_size, ctx), "raise --kv-cache-bytes"
    num_blocks = budget // block_bytes
    if num_blocks < 1:
        raise ModelLoadError(model.path, f"kv_cache_bytes={budget} is less than one KV block "
                             f"({block_bytes} bytes): {why}")
    capacity = num_blocks * cfg.block_size
    if cfg.max_model_len and cfg.max_model_len > ctx:
        raise ModelLoadError(model.path, f"max_model_len={cfg.max_model_len} exceeds the model's context "
                             f"length {ctx}")
    if cfg.max_model_len and cfg.max_model_len > capacity:
        raise ModelLoadError(model.path, f"max_model_len={cfg.max_model_len} needs more KV cache than "
                             f"kv_cache_bytes={budget} holds ({capacity} tokens): raise --kv-cache-bytes "
                             "or lower --max-model-len")
    max_model_len = cfg.max_model_len or min(ctx, capacity)
    log.info("kv_cache", blocks=num_blocks, tokens=capacity, bytes=num_blocks * block_bytes,
             block_size=cfg.block_size, max_model_len=max_model_len,
             prefix_caching=cfg.enable_prefix_caching, max_num_seqs=cfg.max_num_seqs,
             max_num_batched_tokens=cfg.max_num_batched_tokens)
    return num_blocks, max_model_len


def _gpu_budget(cfg: EngineConfig, runner, bytes_per_token: int, context_length: int) -> tuple[int, str]:
    """gpu_kv_cache_bytes() from a measured full-size step and the device's free memory now."""
    step = runner.measure_step_bytes(cfg.max_num_batched_tokens, cfg.max_num_batched_tokens)
    if cfg.cuda_graphs:  # the graphs keep a decode step's activations for good, beside the eager steps'
        step *= 2
    step += runner.sampler.workspace_bytes(cfg.max_num_seqs, runner.cfg.vocab_size)
    free, total = runner.device_memory()
    budget = gpu_kv_cache_bytes(cfg, bytes_per_token, context_length, free, total, step)
    log.info("gpu_memory", free=free, total=total, step_bytes=step, kv_budget=budget,
             gpu_memory_utilization=cfg.gpu_memory_utilization)
    why = (f"the GPU has {free >> 20} MiB free of {total >> 20} MiB and a step needs {step >> 20} MiB; "
           f"raise --gpu-memory-utilization (now {cfg.gpu_memory_utilization}), free the GPU, "
           "or lower --max-num-batched-tokens")
    return budget, why


def _capture_graphs(cfg: EngineConfig, model: ModelWeights, runner, max_model_len: int) -> None:
    max_blocks = -(-max_model_len // cfg.block_size)
    try:
        sizes = runner.capture_decode_graphs(cfg.max_num_seqs, max_blocks)
    except RuntimeError as exc:
        raise ModelLoadError(model.path, f"capturing the decode CUDA graphs failed ({exc}); "
                             "serve without --cuda-graphs") from exc
    log.info("cuda_graphs", batch_sizes=sizes, max_blocks_per_seq=max_blocks)
