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

from cyserve.fastpath.model.torch_runner import TorchModelRunner  # noqa: E402
from runner_steps import (  # noqa: E402
    BLOCK_SIZE, NUM_BLOCKS, all_rows, assert_logits_close, f32_activation_runner, scenario,
)
from test_decode_padding import MAX_BLOCKS  # noqa: E402

LOGIT_ATOL_FP16 = 0.5


@pytest.mark.parametrize("use_gemv", [False, True], ids=["cublas", "dequant_gemv"])
def test_gpu_logits_match_cpu_path(gguf_model, use_gemv):
    cpu = f32_activation_runner(gguf_model)
    gpu = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cuda", use_gemv=use_gemv)
    for step in scenario():
        assert_logits_close(gpu.forward(all_rows(step)), cpu.forward(all_rows(step)), LOGIT_ATOL_FP16)


def test_device_sampler_on_gpu_picks_what_the_host_sampler_picks():
    """float64 on the GPU: the CPU sampler's arithmetic, so the same tokens and generator states."""
    import numpy as np

    from cyserve.fastpath.model import cpu_sampler as host
    from cyserve.fastpath.model.device_sampler import DeviceSampler
    from test_device_sampler import EOS, batch, twin

    for step in range(4):
        seqs, logits = batch(np.random.default_rng(step), 40)
        theirs = twin(seqs)
        want = host.sample(logits, theirs, (EOS,))
        got = DeviceSampler("cuda", torch.float64).sample(torch.from_numpy(logits).cuda(), seqs, (EOS,))
        assert got == want
        assert [s.rng_state for s in seqs] == [s.rng_state for s in theirs]


def test_engine_generates_on_cuda_with_the_kv_cache_sized_from_the_gpu(model_path):
    import asyncio

    from cyserve.fastpath.engine import Engine
    from cyserve.fastpath.engine_config import EngineConfig
    from cyserve.fastpath.model.device_sampler import DeviceSampler
    from cyserve.fastpath.model.batch import build_inputs
    from cyserve.fastpath.core.request import EngineRequest, SamplingParams, StoppingParams

    cfg = EngineConfig(model_path=model_path, device="cuda", max_num_seqs=8, max_model_len=2048)
    eng = Engine.from_config(cfg)  # no kv_cache_bytes: sized from torch.cuda.mem_get_info
    assert eng.device == "cuda" and isinstance(eng.runner, TorchModelRunner)
    assert isinstance(eng.runner.sampler, DeviceSampler)
    # a lent GPU has far more free memory than 8 contexts of 2048 tokens need (377 MB): the need binds
    assert eng.allocator.num_blocks == 8 * 2048 // eng.block_size
    free, total = torch.cuda.mem_get_info()
    assert total - free <= 0.9 * total
    eng.start()
    try:
        ids = eng.tokenizer.encode("The capital of France is")
        req = EngineRequest("cuda-test", ids, sampling=SamplingParams(temperature=0.0),
                            stopping=StoppingParams(max_tokens=8, ignore_eos=True))

        async def run() -> list[int]:
            return [t async for out in eng.generate(req) for t in out.new_token_ids]

        tokens = asyncio.run(run())
        runner, seq, want = eng.runner, list(ids), []
        blocks = list(range(eng.allocator.num_blocks - 2, eng.allocator.num_blocks))  # unused by now
        for _ in range(8):  # a plain greedy loop over the same runner
            logits = runner.forward(build_inputs([(seq, 0, len(seq), blocks, True)], eng.block_size))
            want.append(int(torch.argmax(logits[0])))
            seq.append(want[-1])
        assert tokens == want
        assert eng.stats().num_used_blocks == 0
    finally:
        eng.stop()


def test_decode_graphs_replay_the_eager_pass(gguf_model):
    eager = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cuda")
    graphed = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cuda")
    assert graphed.capture_decode_graphs(8, MAX_BLOCKS) == [1, 2, 4, 8]
    for step in scenario():  # two prefill steps (eager), then three decode steps (replayed)
        torch.testing.assert_close(graphed.forward(step), eager.forward(step), atol=5e-2, rtol=0)
    assert graphed.decode_graphs.num_replays == 3
    for mine, theirs in zip(graphed.k_caches + graphed.v_caches, eager.k_caches + eager.v_caches):
        torch.testing.assert_close(mine, theirs, atol=1e-2, rtol=1e-2)


def test_engine_with_cuda_graphs_generates_what_it_does_without(model_path):
    import asyncio

    from cyserve.fastpath.engine import Engine
    from cyserve.fastpath.engine_config import EngineConfig
    from cyserve.fastpath.core.request import EngineRequest, SamplingParams, StoppingParams

    def greedy(cuda_graphs: bool) -> list[list[int]]:
        eng = Engine.from_config(EngineConfig(model_path=model_path, device="cuda", kv_cache_bytes=64 << 20,
                                              max_num_seqs=8, cuda_graphs=cuda_graphs))
        eng.start()
        try:
            prompts = [eng.tokenizer.encode(f"Write one sentence about the number {i}.") for i in range(5)]
            reqs = [EngineRequest(f"g{i}", p, SamplingParams(temperature=0.0), StoppingParams(max_tokens=12, ignore_eos=True))
                    for i, p in enumerate(prompts)]

            async def one(req):
                return [t async for out in eng.generate(req) for t in out.new_token_ids]

            async def run():
                return await asyncio.gather(*(one(r) for r in reqs))
            tokens = asyncio.run(run())
            if cuda_graphs:
                assert eng.runner.decode_graphs.num_replays > 0
            return tokens
        finally:
            eng.stop()

    assert greedy(True) == greedy(False)
