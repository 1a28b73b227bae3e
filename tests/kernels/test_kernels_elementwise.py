"""rms_norm, rope, silu_mul, gelu_tanh_mul and add vs the numpy reference."""
import numpy as np
import pytest

from cyserve.kernels import reference as R
from cyserve.kernels.cpu import activation, norm, rope
from kernel_data import ACT_ATOL, ACT_RTOL, NORM_ATOL, NORM_RTOL, ROPE_ATOL, rng

T_VALUES = [1, 2, 3, 7, 17, 64]


@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("D", [1, 9, 576, 1000])
def test_rms_norm(simd, T, D):
    r = rng(T * D)
    x = (r.standard_normal((T, D)) * 3).astype(np.float32)
    w = r.standard_normal(D).astype(np.float32)
    out = np.empty_like(x)
    norm.rms_norm(x, w, 1e-5, out)
    expected = R.rms_norm(x, w, 1e-5)
    np.testing.assert_allclose(out, expected, rtol=NORM_RTOL, atol=NORM_ATOL)
    norm.rms_norm(x, w, 1e-5, x)  # in place: out is x
    np.testing.assert_allclose(x, expected, rtol=NORM_RTOL, atol=NORM_ATOL)


def test_rms_norm_zero_row_is_finite(simd):
    x = np.zeros((2, 64), np.float32)
    out = np.full_like(x, np.nan)
    norm.rms_norm(x, np.ones(64, np.float32), 1e-6, out)
    np.testing.assert_array_equal(out, 0.0)


def test_rms_norm_rejects_malformed_inputs():
    x = np.ones((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"weight must be float32\[8\]"):
        norm.rms_norm(x, np.ones(7, np.float32), 1e-5, np.empty_like(x))
    with pytest.raises(ValueError, match=r"out must be float32\[3, 8\]"):
        norm.rms_norm(x, np.ones(8, np.float32), 1e-5, np.empty((3, 9), np.float32))
    with pytest.raises(ValueError, match="eps"):
        norm.rms_norm(x, np.ones(8, np.float32), -1.0, np.empty_like(x))
    buf = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        norm.rms_norm(buf[:3], np.ones(8, np.float32), 1e-5, buf[1:])


@pytest.mark.parametrize("neox", [False, True], ids=["gguf", "neox"])
@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("H,Dh", [(9, 64), (3, 6), (2, 10), (1, 128), (4, 48)])
def test_rope(simd, neox, T, H, Dh):
    r = rng(T * Dh + H)
    x = r.standard_normal((T, H * Dh)).astype(np.float32)
    pos = r.integers(0, 8192, T).astype(np.int32)
    expected = R.rope(x.copy(), pos, H, Dh, 10000.0, neox)
    rope.rope(x, pos, H, Dh, 10000.0, neox)
    np.testing.assert_allclose(x, expected, rtol=0, atol=ROPE_ATOL)


@pytest.mark.parametrize("neox", [False, True], ids=["gguf", "neox"])
@pytest.mark.parametrize("T", [1, 3, 17])
@pytest.mark.parametrize("H,Dh", [(3, 6), (4, 48), (2, 128)])
def test_rope_frequency_factors(simd, neox, T, H, Dh):
    """Llama 3.1's rope_freqs: pair i turns at theta^(-2i/Dh) / factor_i, factors 1 to 8 as the
    converter writes them; factors of one are no factors."""
    r = rng(T * Dh + H + 1)
    x = r.standard_normal((T, H * Dh)).astype(np.float32)
    pos = r.integers(0, 8192, T).astype(np.int32)
    factors = np.exp(r.uniform(0, np.log(8.0), Dh // 2)).astype(np.float32)
    expected = R.rope(x.copy(), pos, H, Dh, 500000.0, neox, factors)
    got = x.copy()
    rope.rope(got, pos, H, Dh, 500000.0, neox, factors)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ROPE_ATOL)
    assert np.abs(expected - R.rope(x.copy(), pos, H, Dh, 500000.0, neox)).max() > 0.1
    ones, plain = x.copy(), x.copy()
    rope.rope(ones, pos, H, Dh, 500000.0, neox, np.ones(Dh // 2, np.float32))
    rope.rope(plain, pos, H, Dh, 500000.0, neox)
    np.testing.assert_array_equal(ones, plain)


def test_rope_position_zero_is_identity_and_layouts_differ(simd):
    x = rng(1).standard_normal((2, 128)).astype(np.float32)
    y = x.copy()
    rope.rope(y, np.array([0, 0], np.int32), 2, 64, 10000.0, False)
    np.testing.assert_array_equal(y, x)
    a, b = x.copy(), x.copy()
    rope.rope(a, np.array([5, 9], np.int32), 2, 64, 10000.0, False)
    rope.rope(b, np.array([5, 9], np.int32), 2, 64, 10000.0, True)
    assert np.abs(a - b).max() > 0.1
    # rotations keep each pair's norm
    np.testing.assert_allclose(np.hypot(a[:, 0::2], a[:, 1::2]), np.hypot(x[:, 0::2], x[:, 1::2]),
                               rtol=1e-5)


def test_rope_rejects_malformed_inputs():
    x = np.ones((2, 64), np.float32)
    pos = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="even head_dim"):
        rope.rope(np.ones((2, 63), np.float32), pos, 7, 9, 1e4, False)
    with pytest.raises(ValueError, match=r"x must be float32\[T, 48\]"):
        rope.rope(x, pos, 3, 16, 1e4, False)
    with pytest.raises(ValueError, match=r"positions must be int32\[2\]"):
        rope.rope(x, np.zeros(3, np.int32), 1, 64, 1e4, False)
    with pytest.raises(ValueError, match="theta"):
        rope.rope(x, pos, 1, 64, 0.0, False)
    with pytest.raises(ValueError, match="dtype mismatch"):
        rope.rope(x, np.zeros(2, np.int64), 1, 64, 1e4, False)
    with pytest.raises(ValueError, match=r"freq_factors must be float32\[32\]"):
        rope.rope(x, pos, 1, 64, 1e4, False, np.ones(31, np.float32))
    with pytest.raises(ValueError, match=r"freq_factors\[3\] must be a finite number > 0"):
        rope.rope(x, pos, 1, 64, 1e4, False, np.where(np.arange(32) == 3, 0.0, 1.0).astype(np.float32))
    assert (x == 1).all()


@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("F", [1, 13, 1536])
def test_silu_mul(simd, T, F):
    r = rng(T + F)
    gate = (r.standard_normal((T, F)) * 4).astype(np.float32)
    up = r.standard_normal((T, F)).astype(np.float32)
    out = np.empty_like(gate)
    activation.silu_mul(gate, up, out)
    expected = R.silu_mul(gate, up)
    np.testing.assert_allclose(out, expected, rtol=ACT_RTOL, atol=ACT_ATOL)
    activation.silu_mul(gate, up, gate)  # out may be gate itself
    np.testing.assert_allclose(gate, expected, rtol=ACT_RTOL, atol=ACT_ATOL)


def test_silu_mul_extremes(simd):
    """Huge negative gates give -0, not exp-overflow garbage; huge positive ones pass through."""
    gate = np.array([[-1000, -100, -88.5, -88, -20, -1e-30, 0, 1e-30, 20, 88, 100, 1000, 3e38, -3e38] * 2],
                    np.float32)
    up = np.full_like(gate, 1.0)
    out = np.empty_like(gate)
    activation.silu_mul(gate, up, out)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, R.silu_mul(gate, up), rtol=ACT_RTOL, atol=ACT_ATOL)
    nan, nan_out = np.full((1, 9), np.nan, np.float32), np.zeros((1, 9), np.float32)
    activation.silu_mul(nan, np.ones_like(nan), nan_out)
    assert np.isnan(nan_out).all()


@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("F", [1, 13, 1536])
def test_gelu_tanh_mul(simd, T, F):
    r = rng(T + 3 * F)
    gate = (r.standard_normal((T, F)) * 4).astype(np.float32)
    up = r.standard_normal((T, F)).astype(np.float32)
    out = np.empty_like(gate)
    activation.gelu_tanh_mul(gate, up, out)
    expected = R.gelu_tanh_mul(gate, up)
    np.testing.assert_allclose(out, expected, rtol=ACT_RTOL, atol=ACT_ATOL)
    activation.gelu_tanh_mul(gate, up, up)  # out may be up itself
    np.testing.assert_allclose(up, expected, rtol=ACT_RTOL, atol=ACT_ATOL)


def test_gelu_tanh_matches_torch_and_differs_from_silu():
    """The reference is the gelu_pytorch_tanh of Gemma's checkpoints, and not SiLU."""
    torch = pytest.importorskip("torch")
    g = np.linspace(-12, 12, 4001, dtype=np.float32)[None]
    one = np.ones_like(g)
    want = torch.nn.functional.gelu(torch.from_numpy(g).double(), approximate="tanh").numpy()
    np.testing.assert_allclose(R.gelu_tanh_mul(g, one), want, rtol=1e-6, atol=1e-7)
    assert np.abs(R.gelu_tanh_mul(g, one) - R.silu_mul(g, one)).max() > 0.1


def test_gelu_tanh_mul_extremes(simd):
    """Past the cube's overflow a huge negative gate gives -0 and a huge positive one itself."""
    gate = np.array([[-3e38, -1e13, -1000, -100, -20, -5, -1e-30, 0, 1e-30, 5, 20, 100, 1000, 1e13, 3e38] * 2],
                    np.float32)
    up = np.full_like(gate, 0.5)
    out = np.empty_like(gate)
    activation.gelu_tanh_mul(gate, up, out)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, R.gelu_tanh_mul(gate, up), rtol=ACT_RTOL, atol=ACT_ATOL)
    nan, nan_out = np.full((1, 9), np.nan, np.float32), np.zeros((1, 9), np.float32)
    activation.gelu_tanh_mul(nan, np.ones_like(nan), nan_out)
    assert np.isnan(nan_out).all()


@pytest.mark.parametrize("shape", [(1, 1), (3, 577), (64, 576), (300, 1000)])
def test_add(simd, shape):
    r = rng(shape[1])
    a = r.standard_normal(shape).astype(np.float32)
    b = r.standard_normal(shape).astype(np.float32)
    expected = a + b
    activation.add(a, b)
    np.testing.assert_array_equal(a, expected)
    activation.add(a, a)
    np.testing.assert_array_equal(a, expected * 2)


def test_activation_rejects_malformed_inputs():
    a = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match="gate, up and out must all be"):
        activation.silu_mul(a, np.ones((2, 9), np.float32), np.empty_like(a))
    with pytest.raises(ValueError, match="gate, up and out must all be"):
        activation.gelu_tanh_mul(a, a, np.empty((3, 8), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        big = np.ones((3, 8), np.float32)
        activation.gelu_tanh_mul(big[:2], a, big[1:])
    with pytest.raises(ValueError, match=r"b must be float32\[2, 8\]"):
        activation.add(a, np.ones((8, 2), np.float32))
    buf = np.ones((3, 8), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        activation.add(buf[:2], buf[1:])
    assert (a == 1).all() and (buf == 1).all()
