"""Batch invariance: a token's output does not depend on which other tokens share its batch.

With int8 activations this is more than tidiness. A 1-ulp difference in one layer's output can
move an activation across a rounding boundary of the next layer's 8-bit quantization, which turns
it into a whole quantization step; over 30 layers that flips greedy choices at near-ties. So a
request that runs alone (decode steps of T = 1, the GEMV path) and the same request batched with
others (T = 16, the GEMM path) would answer differently, and a seeded request would not reproduce.
Each token's row is quantized on its own, the block dot products are exact integers, and every
kernel path adds a row's block terms in the same order: the bits must match exactly.

This holds for the quantized formats, the integer paths: the 32-element ones (Q4_0, Q4_1, Q5_0,
Q5_1, Q8_0) on int8 blocks of 32 and the K-quants (Q2_K..Q6_K) on Q8_K activations. F32/F16/BF16 weights keep
f32 activations, whose few-token and many-token paths sum in different orders (differences of a
few ulp, which without an 8-bit rounding downstream do not grow into token flips).
"""
import numpy as np
import pytest

from cyserve.kernels.cpu import quant_matmul as qm
from kernel_data import KQUANT_WTYPES, QUANT_WTYPES, make_weight, rng

# GEMV tiles (T = 1..4), the GEMV/GEMM boundary, GEMM tiles with remainders, several x chunks
BATCH_SIZES = [2, 3, 4, 5, 7, 8, 16, 33, 64]


def matmul(x: np.ndarray, w: np.ndarray, wtype: int) -> np.ndarray:
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    qm.matmul(np.ascontiguousarray(x), w, wtype, out)
    return out


# (wtype, N, K): the K-quants need K % 256 == 0
CASES = ([(wt, N, K) for wt in QUANT_WTYPES for N, K in [(37, 96), (301, 576), (64, 1536)]]
         + [(wt, N, K) for wt in KQUANT_WTYPES for N, K in [(37, 256), (301, 768), (65, 2560)]])
ALL_WTYPES = QUANT_WTYPES + KQUANT_WTYPES


@pytest.mark.parametrize("wtype,N,K", CASES)
@pytest.mark.parametrize("T", BATCH_SIZES)
def test_each_row_equals_the_row_alone(simd, num_threads, wtype, N, K, T):
    r = rng(T * 7 + K)
    w = make_weight(r, N, K, wtype)
    x = (r.standard_normal((T, K)) * r.uniform(0.1, 10.0, (T, 1))).astype(np.float32)
    num_threads(2)
    batched = matmul(x, w, wtype)
    alone = np.concatenate([matmul(x[t:t + 1], w, wtype) for t in range(T)])
    np.testing.assert_array_equal(batched, alone)


@pytest.mark.parametrize("wtype", ALL_WTYPES)
def test_a_row_gives_the_same_bits_in_every_batch_it_joins(simd, wtype):
    r = rng(11)
    K = 768 if wtype in KQUANT_WTYPES else 576
    w = make_weight(r, 129, K, wtype)
    row = r.standard_normal((1, K)).astype(np.float32)
    results = []
    for T in [1] + BATCH_SIZES:
        others = r.standard_normal((T - 1, K)).astype(np.float32)
        pos = int(r.integers(0, T))
        x = np.concatenate([others[:pos], row, others[pos:]])
        results.append(matmul(x, w, wtype)[pos])
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])



@pytest.mark.parametrize("wtype", KQUANT_WTYPES)
def test_kquant_rows_across_x_chunks(simd, num_threads, wtype):
    """A batch whose quantized x spans several L2-sized chunks (K = 4096: 42 tokens a chunk)."""
    r = rng(21)
    w = make_weight(r, 13, 4096, wtype)
    x = r.standard_normal((150, 4096)).astype(np.float32)
    num_threads(2)
    batched = matmul(x, w, wtype)
    alone = np.concatenate([matmul(x[t:t + 1], w, wtype) for t in range(0, 150, 7)])
    np.testing.assert_array_equal(batched[::7], alone)
