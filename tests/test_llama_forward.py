"""The native layer loop (CpuForward, GIL released) against the Python loop.

Same CPU kernels in the same order -> the same bits. Against the numpy reference kernels (f64
arithmetic, slow) the logits differ by more than f32 rounding: both quantize activations to int8
blocks, and a rounding difference of 1e-7 that moves one activation across a rounding boundary
becomes a whole quantization step, which the later layers carry on. Measured on this trace (random
token ids, so flat distributions): max |diff| 1.69, mean 0.19, top-1 agreement 0.90 to 0.94.
"""
import numpy as np
import pytest

from cyserve.fastpath.model.cpu_runner import CpuModelRunner, cpu_kernels, reference_kernels
from cyserve.fastpath.model.batch import BatchInputs, build_inputs

BS = 16
NUM_BLOCKS = 32
SAME_KERNELS_ATOL = 1e-4  # identical ops; a margin in case a kernel ever becomes order-dependent
REFERENCE_ATOL = 2.5
REFERENCE_MEAN_ATOL = 0.3
REFERENCE_TOP1 = 0.85


def _prompt(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, 49152, n)]


A, B, C = _prompt(1, 60), _prompt(2, 40), _prompt(3, 20)
BLOCKS_A, BLOCKS_B, BLOCKS_C = [5, 9, 2, 30], [7, 11, 0], [20, 3]

# (name, scheduled): (token_ids, num_computed, num_new, block_ids, wants_logits) per sequence
TRACE = [
    # a chunked prefill's first chunk beside a full prefill that crosses a block boundary
    ("prefill", [(A, 0, 13, BLOCKS_A, False), (B, 0, 21, BLOCKS_B, True)]),
    # mixed: the next chunk of A (crosses positions 16 and 32), a decode of B, a fresh prefill C
    ("mixed", [(A, 13, 24, BLOCKS_A, False), (B, 21, 1, BLOCKS_B, True), (C, 0, 5, BLOCKS_C, True)]),
    # last chunk of A over the 48 boundary, then a pure decode batch
    ("chunk", [(A, 37, 14, BLOCKS_A, True)]),
    ("decode", [(A, 51, 1, BLOCKS_A, True), (B, 22, 1, BLOCKS_B, True), (C, 5, 1, BLOCKS_C, True)]),
]


def _inputs(scheduled) -> BatchInputs:
    """Every row's logits, so each position of every chunk is compared (R > S)."""
    inputs = build_inputs(scheduled, BS)
    inputs.logits_indices = np.arange(inputs.token_ids.shape[0])
    return inputs


def _run_trace(runner: CpuModelRunner, python_loop: bool = False, steps: int = len(TRACE)) -> list[np.ndarray]:
    run = runner.forward_python if python_loop else runner.forward
    return [run(_inputs(scheduled)) for _, scheduled in TRACE[:steps]]


@pytest.fixture(scope="module")
def native_trace(gguf_model):
    return _run_trace(CpuModelRunner(gguf_model, NUM_BLOCKS, BS, max_num_tokens=8))


@pytest.fixture(scope="module")
def python_trace(gguf_model):
    return _run_trace(CpuModelRunner(gguf_model, NUM_BLOCKS, BS, kernels=cpu_kernels()))


@pytest.mark.parametrize("step", range(len(TRACE)), ids=[name for name, _ in TRACE])
def test_native_loop_matches_python_loop(native_trace, python_trace, step):
    python = python_trace
    assert native_trace[step].shape == python[step].shape
    np.testing.assert_allclose(native_trace[step], python[step], rtol=0, atol=SAME_KERNELS_ATOL)


def test_native_loop_matches_reference_kernels(gguf_model, native_trace):
    # the first two steps already hold a chunked prefill, a decode and a block crossing; the
    # numpy kernels take ~15 s a step, so the whole trace would dominate the suite's time
    ref = _run_trace(CpuModelRunner(gguf_model, NUM_BLOCKS, BS, kernels=reference_kernels()), steps=2)
    for (name, _), ours, theirs in zip(TRACE, native_trace, ref):
        diff = np.abs(ours - theirs).max()
        assert diff < REFERENCE_ATOL, f"{name}: max |logit diff| {diff:.4f}"
        mean = np.abs(ours - theirs).mean()
        assert mean < REFERENCE_MEAN_ATOL, f"{name}: mean |logit diff| {mean:.4f}"
        assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= REFERENCE_TOP1, name


def test_python_loop_on_the_same_runner_shares_the_caches(gguf_model):
    """forward and forward_python read and write the same KV arrays."""
    runner = CpuModelRunner(gguf_model, NUM_BLOCKS, BS)
    runner.forward(_inputs(TRACE[0][1]))
    inputs = _inputs([(B, 21, 1, BLOCKS_B, True)])
    native = runner.forward(inputs)
    np.testing.assert_allclose(runner.forward_python(inputs), native, rtol=0, atol=SAME_KERNELS_ATOL)


def test_logits_rows_any_order_and_repeats(gguf_model, native_trace):
    """R may exceed the number of sequences, and rows may repeat or come in any order."""
    runner = CpuModelRunner(gguf_model, NUM_BLOCKS, BS)
    inputs = _inputs(TRACE[0][1])
    rows = np.array([33, 0, 12, 12, 20, 33, 5], np.int64)
    inputs.logits_indices = rows
    np.testing.assert_allclose(runner.forward(inputs), native_trace[0][rows], rtol=0,
                               atol=SAME_KERNELS_ATOL)
    inputs = build_inputs(TRACE[0][1], BS)  # no logits wanted at all for some batches
    inputs.logits_indices = np.zeros(0, np.int64)
    assert runner.forward(inputs).shape == (0, gguf_model.config.vocab_size)


def test_workspace_grows_for_a_bigger_batch(gguf_model):
    runner = CpuModelRunner(gguf_model, NUM_BLOCKS, BS, max_num_tokens=2)
    assert runner.native.capacity == 2
    inputs = _inputs([(A, 0, 40, BLOCKS_A, True)])
    out = runner.forward(inputs)
    assert runner.native.capacity >= 40
    python = CpuModelRunner(gguf_model, NUM_BLOCKS, BS, kernels=cpu_kernels())
    np.testing.assert_allclose(out, python.forward(inputs), rtol=0, atol=SAME_KERNELS_ATOL)


def _bad(inputs: BatchInputs, field: str, value) -> BatchInputs:
    bad = BatchInputs(**{k: np.array(v, copy=True) for k, v in vars(inputs).items()})
    setattr(bad, field, value(getattr(bad, field)))
    return bad


def _set(index, value):
    def change(a):
        a[index] = value
        return a
    return change


BAD_BATCHES = [
    ("token_ids", _set(3, 49152), r"token_ids\[3\]=49152 is not a token id in \[0, 49152\)"),
    ("token_ids", _set(0, -1), r"token_ids\[0\]=-1"),
    ("token_ids", lambda a: a.astype(np.int64), r"token_ids must be an int32 array"),
    ("positions", _set(2, 7), r"positions\[2\]=7, but sequence 0 has context_lens=13"),
    ("slot_mapping", _set(1, 0), r"slot_mapping\[1\]=0, but block_tables\[0\] puts position 1 at slot 81"),
    ("block_tables", _set((0, 0), NUM_BLOCKS), r"block_tables\[0, 0\]=32 is not a block id in \[0, 32\)"),
    ("context_lens", _set(0, 12), r"context_lens\[0\]=12 is shorter than its 13 query rows"),
    ("query_start_loc", _set(2, 30), r"query_start_loc must start at 0 and end at T=34"),
    ("logits_indices", lambda a: np.array([0, 34]), r"logits_indices\[1\]=34 is not a row of the batch \[0, 34\)"),
    ("logits_indices", lambda a: np.array([0.0]), r"logits_indices must be a 1-D integer array"),
    ("block_tables", lambda a: a[:, :1].copy(), r"needs 2 blocks of 16, but block_tables has only 1 columns"),
]


@pytest.mark.parametrize("field,change,message", BAD_BATCHES, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_BATCHES)])
def test_bad_batches_raise_and_leave_the_runner_usable(gguf_model, native_trace, field, change, message):
    runner = CpuModelRunner(gguf_model, NUM_BLOCKS, BS)
    good = _inputs(TRACE[0][1])
    before = [c.copy() for c in runner.k_caches[:2]]
    with pytest.raises(ValueError, match=message):
        runner.forward(_bad(good, field, change))
    for c, b in zip(runner.k_caches, before):
        np.testing.assert_array_equal(c, b)  # validated before anything was written
    np.testing.assert_allclose(runner.forward(good), native_trace[0], rtol=0, atol=SAME_KERNELS_ATOL)


def test_context_longer_than_the_model_is_rejected(gguf_model):
    n_ctx = gguf_model.config.context_length
    runner = CpuModelRunner(gguf_model, 2, BS, max_num_tokens=1)
    ids = [1] * (n_ctx + 1)
    table = [0] * (n_ctx // BS + 1)  # a real cache this long is not needed to hit the check
    inputs = build_inputs([(ids, n_ctx, 1, table, True)], BS)
    with pytest.raises(ValueError, match=rf"context_lens\[0\]={n_ctx + 1} exceeds the model's context length"):
        runner.forward(inputs)


def test_reference_kernels_keep_the_python_loop(gguf_model):
    assert CpuModelRunner(gguf_model, 4, BS, kernels=reference_kernels()).native is None
