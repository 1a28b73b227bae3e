"""The pure-torch twins of the CUDA ops against reference.py, on the CPU (runs in every CI job).

They are the ops the torch runner uses off-GPU, and the readable definition of each CUDA kernel;
test_cuda_kernels.py runs the very same checks on the compiled kernels where a GPU exists.
"""
import pytest
import torch

import cuda_parity as P
from cyserve.kernels.cuda import torch_ops
from cyserve.fastpath.model.torch_runner import OP_NAMES, torch_ops as torch_ops_namespace

DTYPES = [torch.float32, torch.float16]


@pytest.fixture(scope="module")
def ops():
    return torch_ops_namespace()


def test_namespace_has_every_op():
    assert all(callable(getattr(torch_ops, name)) for name in OP_NAMES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80])
def test_reshape_and_cache(ops, dtype, head_dim):
    P.check_reshape_and_cache(ops, "cpu", dtype, head_dim)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80])
def test_paged_attention_decode_and_chunked_prefill(ops, dtype, head_dim):
    P.check_paged_attention(ops, "cpu", dtype, head_dim, [(1, 1), (37, 1), (50, 13), (16, 16), (100, 3)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [576, 1000])
def test_fused_add_rms_norm(ops, dtype, hidden):
    P.check_fused_add_rms_norm(ops, "cpu", dtype, hidden)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [False, True])
def test_rope_on_q_and_k_slices(ops, dtype, neox):
    P.check_rope(ops, "cpu", dtype, neox)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(ops, dtype):
    P.check_silu_mul(ops, "cpu", dtype, 99)


@pytest.mark.parametrize("wtype", P.QUANT_WTYPES)
def test_dequant_gemv(ops, wtype):
    P.check_dequant_gemv(ops, "cpu", torch.float32, wtype, 3, 67, 96)
