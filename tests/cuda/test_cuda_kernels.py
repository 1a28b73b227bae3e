"""The compiled CUDA kernels against reference.py (the same checks test_torch_ops.py runs on the CPU).

Needs a CUDA device and the built extension; skips with the reason otherwise. Activations are fp16
here, so the tolerances are cuda_parity.tolerance(torch.float16).
"""
import pytest
from gpu import require_gpu

torch = require_gpu("the CUDA kernel test")

import cuda_parity as P  # noqa: E402
from cyserve.fastpath.model.torch_runner import cuda_ops  # noqa: E402

F16 = torch.float16
ATTENTION_BATCHES = {
    "decode": [(1, 1), (37, 1), (129, 1), (2000, 1)],
    "chunked_prefill": [(50, 13), (16, 16), (100, 3), (33, 33)],
    "mixed": [(1, 1), (37, 1), (50, 13), (16, 16), (100, 3), (700, 1)],
}


@pytest.fixture(scope="module")
def ops():
    return cuda_ops()


@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_reshape_and_cache(ops, head_dim):
    P.check_reshape_and_cache(ops, "cuda", F16, head_dim)


@pytest.mark.parametrize("batch", ATTENTION_BATCHES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_paged_attention(ops, head_dim, batch):
    P.check_paged_attention(ops, "cuda", F16, head_dim, ATTENTION_BATCHES[batch])


@pytest.mark.parametrize("hidden", [576, 1000, 4096])
def test_fused_add_rms_norm(ops, hidden):
    P.check_fused_add_rms_norm(ops, "cuda", F16, hidden)


@pytest.mark.parametrize("neox", [False, True])
def test_rope(ops, neox):
    P.check_rope(ops, "cuda", F16, neox)


@pytest.mark.parametrize("ffn", [99, 1536])
def test_silu_mul(ops, ffn):
    P.check_silu_mul(ops, "cuda", F16, ffn)


@pytest.mark.parametrize("wtype", P.QUANT_WTYPES)
@pytest.mark.parametrize("num_tokens", [1, 3, 8])
@pytest.mark.parametrize("k", [96, 576, 1536])
def test_dequant_gemv(ops, wtype, num_tokens, k):
    P.check_dequant_gemv(ops, "cuda", F16, wtype, num_tokens, 67, k)


def test_bad_tensors_raise_value_errors_that_name_the_argument(ops):
    cache = torch.zeros((4, 3, 16, 64), dtype=F16, device="cuda")
    k = torch.zeros((2, 192), dtype=torch.float32, device="cuda")
    slots = torch.zeros(2, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="k must be"):
        ops.reshape_and_cache(k, k.half(), cache, cache.clone(), slots)
    with pytest.raises(ValueError, match="at most 8 rows"):
        ops.dequant_gemv(torch.empty((9, 4), dtype=F16, device="cuda"),
                         torch.zeros((9, 32), dtype=F16, device="cuda"),
                         torch.zeros((4, 18), dtype=torch.uint8, device="cuda"), 2)
