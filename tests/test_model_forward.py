"""The llama forward pass against transformers' fp32 forward of the same GGUF.

Weights are identical (both dequantize the same blocks). Ours differ by what llama.cpp's CPU path
differs by: activations quantized to 8-bit blocks before each quantized matmul, the fp16 KV cache,
summation order. Measured on these prompts: max |logit diff| about 1.24 and mean about 0.37
(llama.cpp on the same file: 1.36 and 0.28; with f32 activations we were at 0.02). So the bounds
are a max of 2.5, a mean of 0.5, and the same top-1 wherever the reference's top-2 margin exceeds
1.0. tests/test_accuracy.py holds the top-1 and free-running criteria.
"""
import numpy as np
import pytest

from cyserve.fastpath.model.cpu_runner import CpuModelRunner
from cyserve.fastpath.model.batch import BatchInputs, build_inputs

LOGIT_ATOL = 2.5  # max |diff| over every logit of every position
LOGIT_MEAN_ATOL = 0.5
DECISIVE_MARGIN = 1.0  # top-1 must agree where the reference leads by more than this
BATCH_ATOL = 1e-2  # tiling over T changes summation order; measured ~4e-3
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "Zürich, 東京 and 🧑‍💻 walk into a bar. 1234567 + 89 =",
]

pytestmark = pytest.mark.oracle


def all_positions(inputs: BatchInputs) -> BatchInputs:
    inputs.logits_indices = np.arange(inputs.token_ids.shape[0])
    return inputs


@pytest.fixture(scope="module")
def runner(gguf_model):
    return CpuModelRunner(gguf_model, num_blocks=64, block_size=16)


def check_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    diff = np.abs(ours - ref).max()
    assert diff < LOGIT_ATOL, f"max |logit diff| {diff:.3f} over {LOGIT_ATOL}"
    mean = np.abs(ours - ref).mean()
    assert mean < LOGIT_MEAN_ATOL, f"mean |logit diff| {mean:.3f} over {LOGIT_MEAN_ATOL}"
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > DECISIVE_MARGIN
    assert (ours.argmax(-1) == ref.argmax(-1))[decisive].all()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prefill_logits_match_reference(runner, engine, oracle, prompt):
    ids = engine.tokenizer.encode(prompt)
    blocks = list(range((len(ids) + 15) // 16))
    ours = runner.forward(all_positions(build_inputs([(ids, 0, len(ids), blocks, True)], 16)))
    check_close(ours, oracle.logits(ids))


def test_decode_over_paged_cache_matches_reference(runner, engine, oracle):
    """Prefill a few tokens, then feed the rest one at a time through blocks scattered in the cache."""
    ids = engine.tokenizer.encode(PROMPTS[1] + PROMPTS[0])
    blocks = [40, 3, 17, 9, 25][: (len(ids) + 15) // 16]
    rows = [runner.forward(build_inputs([(ids, 0, 5, blocks, True)], 16))]
    for start in range(5, len(ids)):
        rows.append(runner.forward(build_inputs([(ids, start, 1, blocks, True)], 16)))
    check_close(np.concatenate(rows)[-(len(ids) - 4):], oracle.logits(ids)[4:])


def test_two_sequences_in_one_batch_match_each_alone(runner, engine):
    a = engine.tokenizer.encode(PROMPTS[0])
    b = engine.tokenizer.encode(PROMPTS[2])
    both = runner.forward(build_inputs([(a, 0, len(a), [0], True), (b, 0, len(b), [1, 2], True)], 16))
    alone_a = runner.forward(build_inputs([(a, 0, len(a), [5], True)], 16))
    alone_b = runner.forward(build_inputs([(b, 0, len(b), [6, 7], True)], 16))
    np.testing.assert_allclose(both[0], alone_a[0], atol=BATCH_ATOL)
    np.testing.assert_allclose(both[1], alone_b[0], atol=BATCH_ATOL)
