"""The engine's GPU branch (torch runner + device sampler, KV sized from the device's memory) run
end to end on torch's CPU device, so every CI job checks its wiring: the logits stay torch tensors
from forward to sampler, prompt logprobs are scored from them, only token ids come back, and the
KV budget comes from the measured step. On a GPU, test_cuda_model.py runs the same engine on cuda.
"""
import asyncio

import numpy as np
import pytest
import torch

from cyserve.fastpath.model import cpu_sampler as host_sampler
from cyserve.fastpath.model.device_sampler import DeviceSampler
from cyserve.fastpath.engine import Engine
from cyserve.fastpath.engine_config import EngineConfig, gpu_kv_cache_bytes
from cyserve.fastpath.errors import ModelLoadError
from cyserve.fastpath.model.batch import build_inputs
from cyserve.fastpath.core.request import EngineRequest, SamplingParams, StoppingParams
from cyserve.fastpath.tokenizer import Tokenizer
from cyserve.fastpath.model.torch_runner import TorchModelRunner
from cyserve.fastpath.runner_setup import RunnerSetup, torch_runner

PER_TOKEN = 23040  # SmolLM2-135M: 30 layers x 3 KV heads x 64 x 2 (K, V) x 2 bytes
GiB = 1 << 30


class TorchOnCpuEngine(Engine):
    """The engine with its GPU branch on torch's CPU device (what `--device cuda` builds, but on
    the only device CI has)."""

    def _make_runner(self) -> RunnerSetup:
        return torch_runner(self.config, self.model, "cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def torch_engine(gguf_model):
    # no kv_cache_bytes: the budget comes from _gpu_budget (bounded here by 4 sequences x 512 tokens)
    cfg = EngineConfig(model_path=gguf_model.path, max_num_seqs=4, max_model_len=512, max_num_batched_tokens=64)
    eng = TorchOnCpuEngine(cfg, gguf_model, Tokenizer.from_gguf(gguf_model.reader))
    eng.start()
    yield eng
    eng.stop()


def run(engine, *reqs):
    async def one(req):
        return [o async for o in engine.generate(req)]

    async def main():
        return await asyncio.gather(*(one(r) for r in reqs))
    return asyncio.run(main())


def test_the_gpu_branch_is_what_runs(torch_engine):
    assert isinstance(torch_engine.runner, TorchModelRunner) and isinstance(torch_engine.runner.sampler, DeviceSampler)
    # the budget was the need (4 full contexts), not host memory: blocks for 4 x 512 tokens
    assert torch_engine.allocator.num_blocks == 4 * 512 * PER_TOKEN // TorchModelRunner.kv_bytes_per_block(
        torch_engine.model, torch_engine.block_size)
    assert torch_engine.runner.num_blocks == torch_engine.allocator.num_blocks


def test_greedy_tokens_are_the_runners_argmax(torch_engine):
    """The engine's tokens (scheduler, device sampler) equal a plain greedy loop over the same runner."""
    ids = torch_engine.tokenizer.encode("The capital of France is")
    [outs] = run(torch_engine, EngineRequest("g", ids, SamplingParams(temperature=0.0),
                                             StoppingParams(max_tokens=6, ignore_eos=True)))
    got = [t for o in outs for t in o.new_token_ids]
    runner = TorchModelRunner(torch_engine.model, 4, 16, device="cpu")
    seq, want = list(ids), []
    for _ in range(6):
        logits = runner.forward(build_inputs([(seq, 0, len(seq), [0, 1, 2, 3], True)], 16))
        want.append(int(torch.argmax(logits[0])))
        seq.append(want[-1])
    assert got == want


def test_prompt_and_token_logprobs_come_from_device_logits(torch_engine):
    ids = torch_engine.tokenizer.encode("One, two, three, four, five")
    sampling = SamplingParams(temperature=0.0, logprobs=2, prompt_logprobs=3)
    [outs] = run(torch_engine, EngineRequest("lp", ids, sampling, StoppingParams(max_tokens=2, ignore_eos=True)))
    plp = outs[0].prompt_logprobs
    assert plp is not None and plp.token_ids == ids[1:]
    runner = TorchModelRunner(torch_engine.model, 4, 16, device="cpu")
    step = build_inputs([(ids, 0, len(ids), [0, 1], True)], 16)
    step.logits_indices = np.arange(len(ids) - 1, dtype=np.int64)
    want_lp, want_ids, _ = host_sampler.rows_logprobs(runner.forward(step).numpy(), ids[1:], 3)
    np.testing.assert_allclose(plp.logprobs, want_lp, atol=1e-3)
    assert plp.top_ids == want_ids.tolist()
    for out in outs:
        for lp, top in out.logprobs:
            assert lp <= 0 and len(top) == 2 and top[0][1] >= top[1][1]


def test_seeded_sampling_and_penalties_finish_and_free_every_block(torch_engine):
    ids = torch_engine.tokenizer.encode("Tell me a story about a cat.")
    seeded = SamplingParams(temperature=0.9, top_p=0.9, top_k=40, seed=5, repetition_penalty=1.2,
                            frequency_penalty=0.3, logit_bias=((29, 2.0),))
    stop = StoppingParams(max_tokens=8, min_tokens=8)
    first, second = run(torch_engine, EngineRequest("a", ids, seeded, stop), EngineRequest("b", ids, seeded, stop))
    tokens = [[t for o in outs for t in o.new_token_ids] for outs in (first, second)]
    assert len(tokens[0]) == 8 and tokens[0] == tokens[1]  # same seed, same draws, batched together
    stats = torch_engine.stats()
    assert stats.num_running == 0 and stats.num_used_blocks == 0


def test_measure_step_runs_on_a_scratch_cache_and_leaves_none(gguf_model):
    runner = TorchModelRunner(gguf_model, 0, 16, device="cpu")
    assert runner.num_blocks == 0
    with pytest.raises(RuntimeError, match="allocate_kv_cache"):
        runner.forward(build_inputs([([1, 2, 3], 0, 3, [0], True)], 16))
    assert runner.measure_step_bytes(40, 40) == 0  # nothing to measure off CUDA; it still runs the step
    assert runner.k_caches == [] and runner.v_caches == []
    runner.allocate_kv_cache(3)
    assert runner.num_blocks == 3
    with pytest.raises(RuntimeError, match="before allocate_kv_cache"):
        runner.measure_step_bytes(8, 1)
    with pytest.raises(ValueError, match="num_blocks"):
        runner.allocate_kv_cache(0)


def test_gpu_budget_arithmetic():
    cfg = EngineConfig(model_path="m", max_num_seqs=64, max_model_len=8192, gpu_memory_utilization=0.9)
    # an 80 GiB GPU with 1 GiB used (weights) and a 2 GiB step: up to 0.9 x 80 - 1 - 2 = 69 GiB, but 64
    # full contexts need only 64 x 8192 x PER_TOKEN (~11.3 GiB)
    assert gpu_kv_cache_bytes(cfg, PER_TOKEN, 8192, 79 * GiB, 80 * GiB, 2 * GiB) == 64 * 8192 * PER_TOKEN
    # a GPU another process mostly fills: what is left under the 90% line
    assert gpu_kv_cache_bytes(cfg, PER_TOKEN, 8192, 10 * GiB, 80 * GiB, 1 * GiB) == int(0.9 * 80 * GiB) - 70 * GiB - GiB
    # nothing left: 0, which the engine turns into an error naming the knobs
    assert gpu_kv_cache_bytes(cfg, PER_TOKEN, 8192, 4 * GiB, 80 * GiB, 1 * GiB) == 0


def test_no_room_on_the_device_is_a_load_error_naming_the_fix(gguf_model):
    cfg = EngineConfig(model_path=gguf_model.path, max_num_seqs=2, max_model_len=256, gpu_memory_utilization=1e-6)
    with pytest.raises(ModelLoadError, match="raise --gpu-memory-utilization"):
        TorchOnCpuEngine(cfg, gguf_model, Tokenizer.from_gguf(gguf_model.reader))


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1])
def test_gpu_memory_utilization_out_of_range_is_refused(gguf_model, value):
    cfg = EngineConfig(model_path=gguf_model.path, kv_cache_bytes=8 << 20, gpu_memory_utilization=value)
    with pytest.raises(ModelLoadError, match="gpu_memory_utilization"):
        Engine(cfg, gguf_model, Tokenizer.from_gguf(gguf_model.reader))


def test_cuda_graphs_off_a_gpu_is_a_load_error_naming_the_fix(gguf_model):
    cfg = EngineConfig(model_path=gguf_model.path, kv_cache_bytes=8 << 20, max_num_seqs=2, cuda_graphs=True)
    with pytest.raises(ModelLoadError, match="serve without --cuda-graphs"):
        TorchOnCpuEngine(cfg, gguf_model, Tokenizer.from_gguf(gguf_model.reader))
