"""The torch runner on the GPU (CUDA ops, fp16 activations) against the CPU path on the default model.

Same scenario as test_torch_runner.py: chunked prefill beside a whole prompt, then joint decode
steps over scattered blocks, with logits compared at every row. Skips without a CUDA device or the
built extension.

Tolerance: fp16 activations and weights against the CPU runner with f32 activations (not the int8
fast path, whose own quantization noise is ~1 logit), plus fp16 logits; chosen before any GPU run:
tighten it once measured.
"""
import pytest
from gpu import require_gpu

torch = require_gpu("the GPU model test")

from cyserve.fastpath.torch_runner import TorchModelRunner  # noqa: E402
from runner_steps import (  # noqa: E402
    BLOCK_SIZE, NUM_BLOCKS, all_rows, assert_logits_close, f32_activation_runner, scenario,
)

LOGIT_ATOL_FP16 = 0.5


@pytest.mark.parametrize("use_gemv", [False, True], ids=["cublas", "dequant_gemv"])
def test_gpu_logits_match_cpu_path(gguf_model, use_gemv):
    cpu = f32_activation_runner(gguf_model)
    gpu = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cuda", use_gemv=use_gemv)
    for step in scenario():
        assert_logits_close(gpu.forward(all_rows(step)), cpu.forward(all_rows(step)), LOGIT_ATOL_FP16)


def gguf_vocab(eng) -> int:
    return eng.model.config.vocab_size


def test_engine_generates_on_cuda(model_path):
    import asyncio

    from cyserve.fastpath.engine import Engine, EngineConfig
    from cyserve.fastpath.request import EngineRequest, SamplingParams, StoppingParams

    eng = Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=64 << 20, device="cuda"))
    assert eng.device == "cuda" and isinstance(eng.runner, TorchModelRunner)
    eng.start()
    try:
        ids = eng.tokenizer.encode("The capital of France is")

        req = EngineRequest("cuda-test", ids, sampling=SamplingParams(temperature=0.0),
                            stopping=StoppingParams(max_tokens=8, ignore_eos=True))

        async def run() -> list[int]:
            tokens: list[int] = []
            async for out in eng.generate(req):
                tokens.extend(out.new_token_ids)
            return tokens

        tokens = asyncio.run(run())
        assert len(tokens) == 8 and all(0 <= t < gguf_vocab(eng) for t in tokens)
    finally:
        eng.stop()
