"""Step sequences that drive a model runner the way the engine does, for comparing two runners."""
from __future__ import annotations

import numpy as np

from types import SimpleNamespace

from cyserve.fastpath.model.gguf_loader import ModelWeights
from cyserve.fastpath.model.cpu_runner import CpuModelRunner, cpu_kernels
from cyserve.fastpath.model.batch import BatchInputs, build_inputs
from cyserve.kernels.cpu.quant_matmul import dequantize

BLOCK_SIZE = 16
NUM_BLOCKS = 24
PROMPT_A = list(range(1000, 1041))  # 41 tokens: three blocks, the last one partly filled
PROMPT_B = [int(t) for t in np.random.default_rng(7).integers(10, 49000, 29)]
BLOCKS_A = [17, 3, 9, 21]  # scattered on purpose: a runner reading blocks in order would be caught
BLOCKS_B = [5, 12]


def f32_activation_runner(model: ModelWeights) -> CpuModelRunner:
    """The CPU runner with unquantized activations: its linear layers multiply f32 x by the
    dequantized weights, as the GPU path does (the CPU kernels' int8 activations would add their
    own ~1 logit of quantization noise and hide a runner bug under it). Everything else is the
    CPU kernels, through the Python layer loop."""
    dense: dict[int, np.ndarray] = {}

    def matmul(x: np.ndarray, w: np.ndarray, wtype: int, out: np.ndarray) -> None:
        if id(w) not in dense:
            dense[id(w)] = dequantize(w, wtype, x.shape[1])
        np.matmul(x, dense[id(w)].T, out=out)

    kernels = SimpleNamespace(**{**vars(cpu_kernels()), "matmul": matmul})
    return CpuModelRunner(model, NUM_BLOCKS, BLOCK_SIZE, kernels=kernels)


def scenario() -> list[BatchInputs]:
    """A's prompt in two chunks (the second beside B's whole prompt), then joint decode steps."""
    a, b = list(PROMPT_A), list(PROMPT_B)
    steps = [build_inputs([(a, 0, 19, BLOCKS_A, False)], BLOCK_SIZE)]
    steps.append(build_inputs([(a, 19, len(a) - 19, BLOCKS_A, True), (b, 0, len(b), BLOCKS_B, True)], BLOCK_SIZE))
    for i in range(3):  # the fed tokens are fixed, so both runners see the same inputs
        a.append(200 + i)
        b.append(300 + i)
        steps.append(build_inputs([(a, len(a) - 1, 1, BLOCKS_A, True), (b, len(b) - 1, 1, BLOCKS_B, True)],
                                  BLOCK_SIZE))
    return steps


def all_rows(inputs: BatchInputs) -> BatchInputs:
    """The same step, asking for logits at every row (prefill positions included)."""
    inputs.logits_indices = np.arange(inputs.token_ids.shape[0], dtype=np.int64)
    return inputs


def assert_logits_close(ours, ref: np.ndarray, atol: float) -> None:
    """Max |diff| under atol, and the same argmax wherever the reference's top-2 margin exceeds it.
    `ours` may be a torch tensor on any device (the torch runner's logits stay where computed)."""
    if not isinstance(ours, np.ndarray):
        ours = ours.cpu().numpy()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.isfinite(ours).all()
    diff = float(np.abs(ours - ref).max())
    assert diff < atol, f"max |logit diff| {diff:.4f} over {atol}"
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > atol
    assert (ours.argmax(-1) == ref.argmax(-1))[decisive].all()
