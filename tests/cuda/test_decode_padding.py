"""The CUDA graphs' padded decode batches (cuda_graphs.padded_decode_inputs), checked on any device
through the eager pass: the real rows' logits and the KV cache are what the unpadded batch gives,
and padding rows write nothing. Capture and replay themselves need a GPU (test_cuda_model.py)."""
import numpy as np
import pytest
import torch

from cyserve.fastpath.model.cuda_graphs import StaticInputs, graph_batch_sizes, is_decode_batch, padded_decode_inputs
from cyserve.fastpath.model.torch_runner import TorchModelRunner
from runner_steps import BLOCK_SIZE, BLOCKS_A, BLOCKS_B, NUM_BLOCKS, scenario

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PAD_TO, MAX_BLOCKS = 8, 6


@pytest.mark.parametrize("max_num_seqs, sizes", [
    (1, [1]), (3, [1, 2, 4]), (4, [1, 2, 4]), (5, [1, 2, 4, 8]), (17, [1, 2, 4, 8, 16, 24]),
    (64, [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]),
])
def test_batch_sizes(max_num_seqs, sizes):
    assert graph_batch_sizes(max_num_seqs) == sizes


def test_only_decode_steps_qualify():
    steps = scenario()
    assert [is_decode_batch(s) for s in steps] == [False, False, True, True, True]
    with pytest.raises(ValueError, match="not a decode batch"):
        padded_decode_inputs(steps[1], PAD_TO, MAX_BLOCKS)
    with pytest.raises(ValueError, match="not a decode batch"):
        padded_decode_inputs(steps[2], 1, MAX_BLOCKS)  # two rows do not fit one
    with pytest.raises(ValueError, match="not a decode batch"):
        padded_decode_inputs(steps[2], PAD_TO, 2)  # A's table is 4 blocks wide


def test_padded_layout():
    step = scenario()[2]
    padded = padded_decode_inputs(step, PAD_TO, MAX_BLOCKS)
    assert padded.token_ids.shape == padded.positions.shape == padded.context_lens.shape == (PAD_TO,)
    assert padded.block_tables.shape == (PAD_TO, MAX_BLOCKS)
    np.testing.assert_array_equal(padded.slot_mapping[2:], -1)
    np.testing.assert_array_equal(padded.context_lens[2:], 1)
    np.testing.assert_array_equal(padded.block_tables[:2, :step.block_tables.shape[1]], step.block_tables)
    assert not padded.block_tables[2:].any() and not padded.block_tables[:, step.block_tables.shape[1]:].any()
    assert is_decode_batch(padded)


def test_padded_decode_steps_give_the_unpadded_logits_and_cache(gguf_model):
    plain = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cpu")
    padded = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cpu")
    for step in scenario():
        want = plain.forward(step)
        if is_decode_batch(step):
            got = padded.forward(padded_decode_inputs(step, PAD_TO, MAX_BLOCKS))
            assert got.shape[0] == PAD_TO and torch.isfinite(got).all()
            got = got[:want.shape[0]]
        else:
            got = padded.forward(step)
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
    owned = sorted(BLOCKS_A + BLOCKS_B)
    for mine, theirs in zip(padded.k_caches + padded.v_caches, plain.k_caches + plain.v_caches):
        torch.testing.assert_close(mine[owned], theirs[owned], atol=2e-3, rtol=2e-3)  # one fp16 ulp
        others = [b for b in range(NUM_BLOCKS) if b not in owned]
        assert not mine[others].any(), "a padding row wrote into the cache"


def test_static_inputs_feed_the_pass_what_the_padded_batch_holds(gguf_model):
    """The flat buffer a graph is captured on: its views, reloaded step after step at different
    sizes, give the eager pass the unpadded batch's logits."""
    plain = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cpu")
    staged = TorchModelRunner(gguf_model, NUM_BLOCKS, BLOCK_SIZE, device="cpu")
    static = StaticInputs(PAD_TO, MAX_BLOCKS, torch.device("cpu"))
    for i, step in enumerate(scenario()):
        want = plain.forward(step)
        if not is_decode_batch(step):
            staged.forward(step)
            continue
        size = (2, PAD_TO, 4)[i - 2]  # a different size each step: stale tails must not matter
        padded = padded_decode_inputs(step, size, MAX_BLOCKS)
        static.load(padded)
        args = static.args(size)
        for name, view in zip(("token_ids", "positions", "slot_mapping", "block_tables", "query_start_loc",
                               "context_lens"), args):
            np.testing.assert_array_equal(view.numpy(), getattr(padded, name))
        got = staged._forward_tensors(*args)
        torch.testing.assert_close(got[:want.shape[0]], want, atol=1e-3, rtol=0)
