"""The torch model runner on the CPU device (pure-torch ops) against the CPU CpuModelRunner.

This proves the runner's own logic in every CI job, GPU or not: fused QKV and gate/up weights,
the fp32 residual with fused add+RMSNorm, block tables, slot mapping, chunked prefill beside
decode rows, GQA, the GEMV routing for small batches. On a GPU, test_cuda_model.py runs the same
scenario with the CUDA ops.

Tolerance: both sides use the same dequantized weights, f32 activations (the CPU side through
`f32_activation_runner`, not the int8 fast path) and the fp16 KV cache, so differences are
summation order only (measured ~4e-3 on these steps).
"""
import numpy as np
import pytest
import torch

from cyserve.fastpath.model.cpu_runner import CpuModelRunner
from cyserve.fastpath.model.torch_runner import TorchModelRunner
from runner_steps import BLOCK_SIZE, NUM_BLOCKS, all_rows, assert_logits_close, f32_activation_runner, scenario

LOGIT_ATOL = 2e-2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cpu_runner(gguf_model):
    return f32_activation_runner(gguf_model)


def run_both(gguf_model, cpu_runner, **kwargs) -> tuple[TorchModelRunner, list[tuple[np.ndarray, np.ndarray]]]:
    ours = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cpu", **kwargs)
    return ours, [(ours.forward(all_rows(step)), cpu_runner.forward(all_rows(step))) for step in scenario()]


def test_scenario_matches_cpu_runner_step_by_step(gguf_model, cpu_runner):
    ours, pairs = run_both(gguf_model, cpu_runner)
    assert [p[0].shape[0] for p in pairs] == [19, 22 + 29, 2, 2, 2]
    for got, ref in pairs:
        assert_logits_close(got, ref, LOGIT_ATOL)
    # the K/V landed in the same blocks and slots as on the CPU path (untouched blocks stay zero)
    for layer in (0, gguf_model.config.num_layers - 1):
        for mine, theirs in ((ours.k_caches[layer], cpu_runner.k_caches[layer]),
                             (ours.v_caches[layer], cpu_runner.v_caches[layer])):
            np.testing.assert_allclose(mine.numpy().astype(np.float32), theirs.astype(np.float32),
                                       rtol=1e-2, atol=1e-2)


def test_gemv_route_for_small_batches_matches_cpu_runner(gguf_model, cpu_runner):
    """use_gemv: decode steps (2 rows) go through dequant_gemv on the raw GGUF rows."""
    _, pairs = run_both(gguf_model, cpu_runner, use_gemv=True)
    for ours, ref in pairs:
        assert_logits_close(ours, ref, LOGIT_ATOL)


def test_only_requested_rows_come_back(gguf_model):
    runner = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cpu")
    steps = scenario()
    assert runner.forward(steps[0]).shape == (0, gguf_model.config.vocab_size)
    assert runner.forward(steps[1]).shape == (2, gguf_model.config.vocab_size)


def test_kv_cache_layout_and_size(gguf_model):
    cfg = gguf_model.config
    runner = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cpu")
    shape = (NUM_BLOCKS, cfg.num_kv_heads, BLOCK_SIZE, cfg.head_dim)
    assert len(runner.k_caches) == len(runner.v_caches) == cfg.num_layers
    assert all(c.shape == shape and c.dtype == torch.float16 for c in runner.k_caches + runner.v_caches)
    per_block = sum(c[0].numel() * c.element_size() for c in runner.k_caches + runner.v_caches)
    assert TorchModelRunner.kv_bytes_per_block(gguf_model, BLOCK_SIZE) == per_block
    assert per_block == CpuModelRunner.kv_bytes_per_block(gguf_model, BLOCK_SIZE)
