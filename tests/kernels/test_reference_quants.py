"""The numpy reference quantizers and decoders (cyserve.kernels.reference_quants) against the gguf
package: the bytes tests write into GGUF models decode the way llama.cpp decodes them."""
import numpy as np
import pytest
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from cyserve.kernels import reference_quants as RQ
from cyserve.kernels.reference_kquants import fma_f32, quantize_activations_q8k

ALL_QUANTS = list(RQ.BLOCK32_QUANTS) + list(RQ.K_QUANTS)
# Relative RMS error of a round trip of Gaussian rows, per format: loose enough for any seed,
# tight enough that a mis-packed field (a swapped nibble, a wrong scale) fails.
ROUND_TRIP_RMS = {RQ.Q4_0: 0.11, RQ.Q4_1: 0.10, RQ.Q5_0: 0.055, RQ.Q5_1: 0.05, RQ.Q8_0: 0.008,
                  RQ.Q2_K: 0.40, RQ.Q3_K: 0.20, RQ.Q4_K: 0.10, RQ.Q5_K: 0.05, RQ.Q6_K: 0.025}


def gaussian(seed: int, N: int, K: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    W = (r.standard_normal((N, K)) * r.uniform(0.01, 3.0, (N, 1))).astype(np.float32)
    W[0, : min(K, 64)] = np.abs(W[0, : min(K, 64)])   # an all-positive stretch (min = 0)
    if N > 1:
        W[1, :32] = 0.0                                # an all-zero block
    return W


@pytest.mark.parametrize("wtype", ALL_QUANTS + [RQ.F16, RQ.BF16])
def test_layout_matches_gguf(wtype):
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(wtype)]
    assert RQ.BLOCK_LAYOUT[wtype] == (block, size)


@pytest.mark.parametrize("wtype", ALL_QUANTS)
@pytest.mark.parametrize("N,K", [(1, 256), (3, 768), (7, 512)])
def test_dequantize_matches_gguf_exactly(wtype, N, K):
    w = RQ.quantize(gaussian(N + K, N, K), wtype)
    assert w.shape == (N, RQ.row_bytes(wtype, K)) and w.dtype == np.uint8
    expected = quants.dequantize(w, GGMLQuantizationType(wtype)).reshape(N, K)
    np.testing.assert_array_equal(RQ.dequantize(w, wtype, K), expected)


@pytest.mark.parametrize("wtype", ALL_QUANTS)
def test_dequantize_random_bytes_matches_gguf(wtype):
    """Every bit pattern of the packed fields, not only what our quantizer writes."""
    block, size = RQ.BLOCK_LAYOUT[wtype]
    K = 1024
    raw = np.random.default_rng(wtype).integers(0, 256, (5, K // block * size), dtype=np.uint8)
    blocks = raw.reshape(-1, size)
    # finite scales: f16 exponent bits below all-ones
    for off in {RQ.Q2_K: (80, 82), RQ.Q3_K: (108,), RQ.Q4_K: (0, 2), RQ.Q5_K: (0, 2),
                RQ.Q6_K: (208,)}.get(wtype, (0, 2) if wtype in (RQ.Q4_1, RQ.Q5_1) else (0,)):
        blocks[:, off + 1] &= 0x3B
    expected = quants.dequantize(raw, GGMLQuantizationType(wtype)).reshape(5, K)
    np.testing.assert_array_equal(RQ.dequantize(raw, wtype, K), expected)


@pytest.mark.parametrize("wtype", [RQ.Q4_0, RQ.Q4_1, RQ.Q5_0, RQ.Q5_1, RQ.Q8_0, RQ.BF16, RQ.F16])
def test_quantize_matches_gguf_exactly(wtype):
    """Where gguf has a quantizer (ggml's quantize_row_*_ref in numpy), ours writes the same bytes."""
    W = gaussian(3, 9, 320)
    expected = quants.quantize(W, GGMLQuantizationType(wtype)).view(np.uint8).reshape(9, -1)
    np.testing.assert_array_equal(RQ.quantize(W, wtype), expected)


@pytest.mark.parametrize("wtype", ALL_QUANTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_error(wtype, seed):
    W = gaussian(seed, 16, 1024)
    back = RQ.dequantize(RQ.quantize(W, wtype), wtype, 1024)
    rms = np.sqrt(((back - W) ** 2).mean() / (W ** 2).mean())
    assert rms < ROUND_TRIP_RMS[wtype], f"{RQ.NAMES[wtype]}: relative RMS {rms:.4f}"
    assert (back[1, :32] == 0).all()  # a zero block stays zero


@pytest.mark.parametrize("wtype", ALL_QUANTS)
def test_requantizing_the_decoded_grid_is_near_stable(wtype):
    """Values already on a quantization grid come back close to themselves: a quantizer that
    packed a field wrongly would scatter them."""
    W = RQ.dequantize(RQ.quantize(gaussian(5, 8, 512), wtype), wtype, 512)
    again = RQ.dequantize(RQ.quantize(W, wtype), wtype, 512)
    rms = np.sqrt(((again - W) ** 2).mean() / (W ** 2).mean())
    assert rms < ROUND_TRIP_RMS[wtype] / 2


def test_constant_and_zero_rows():
    for wtype in ALL_QUANTS:
        W = np.zeros((2, 256), np.float32)
        W[1] = 0.75
        back = RQ.dequantize(RQ.quantize(W, wtype), wtype, 256)
        assert (back[0] == 0).all()
        np.testing.assert_allclose(back[1], 0.75, rtol=0.02 if wtype != RQ.Q2_K else 0.34)


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of 256"):
        RQ.quantize(np.ones((2, 320), np.float32), RQ.Q4_K)
    with pytest.raises(ValueError, match="finite"):
        RQ.quantize(np.full((1, 32), np.inf, np.float32), RQ.Q8_0)
    with pytest.raises(ValueError, match="f32\\[N, K\\]"):
        RQ.quantize(np.ones(256, np.float32), RQ.Q6_K)


def test_q8k_activations():
    x = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32) * 4
    x[1, :256] = 0
    q, d, bs = quantize_activations_q8k(x)
    assert d[1, 0] == 0 and not q[1, :256].any()
    assert np.abs(q).max() == 127
    np.testing.assert_array_equal(bs, q.reshape(3, 32, 16).astype(np.int32).sum(-1))
    err = np.abs(q.reshape(3, 2, 256) * d[..., None] - x.reshape(3, 2, 256))
    assert (err <= d[..., None] * (0.5 + 1e-6)).all()


def test_fma_f32_rounds_once():
    # 1 + 2^-24 is a tie at f32 and rounds to 1 after a separate product; fused, the tiny c
    # pushes it up
    a = np.array([1.0 + 2.0 ** -12], np.float32)
    c = np.array([2.0 ** -60], np.float32)
    assert fma_f32(a, a, c)[0] == np.float32(1.0 + 2.0 ** -11 + 2.0 ** -23)
    r = np.random.default_rng(1)
    a, b, c = (r.standard_normal(10000).astype(np.float32) for _ in range(3))
    exact = a.astype(np.float64) * b + c
    got = fma_f32(a, b, c).astype(np.float64)
    ulp = np.spacing(np.abs(got).astype(np.float32)).astype(np.float64)
    assert (np.abs(got - exact) <= ulp / 2).all()
