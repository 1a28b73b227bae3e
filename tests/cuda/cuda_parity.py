"""Parity checks of the CUDA op set against cyserve/kernels/reference.py, for any backend.

The same checks run twice: on the pure-torch twins (`torch_ops`, on the CPU, in every CI run) and
on the compiled extension (on a GPU, where one exists). Inputs are rounded to the backend's
activation dtype before the reference sees them, so the tolerances measure the kernel, not the
input rounding. Shapes are odd on purpose: head counts that are not powers of two (9 q heads over 3
KV heads), widths that are not multiples of a warp, blocks handed out in a shuffled order, padded
block tables, slot -1, decode rows beside prefill chunks in one batch.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from cyserve.kernels import reference as R
from kernel_data import CUDA_QUANT_WTYPES as QUANT_WTYPES
from kernel_data import PagedBatch, make_weight


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for one fp16/fp32 output rounding on values of order 1."""
    return (2e-3, 2e-3) if dtype == torch.float16 else (1e-5, 1e-5)


def rounded(a: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """a as the backend sees it: rounded to dtype, back in float32."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dtype).float().numpy()


def tensor(a: np.ndarray, device: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.array(a))  # a copy: ops write in place, the numpy input must stay as it was
    return t.to(device=device, dtype=dtype or t.dtype)


def host(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()


def check_reshape_and_cache(ops: SimpleNamespace, device: str, dtype: torch.dtype, head_dim: int) -> None:
    r = np.random.default_rng(1)
    num_blocks, num_kv_heads, block_size, num_tokens = 5, 3, 16, 23
    slots = r.permutation(num_blocks * block_size)[:num_tokens].astype(np.int32)
    slots[[2, 11]] = -1
    kv = rounded(r.standard_normal((num_tokens, 2 * num_kv_heads * head_dim)), dtype)  # k | v as one matrix
    k, v = kv[:, : num_kv_heads * head_dim], kv[:, num_kv_heads * head_dim:]
    shape = (num_blocks, num_kv_heads, block_size, head_dim)
    k_ref, v_ref = np.full(shape, 0x3C00, np.uint16), np.full(shape, 0x3C00, np.uint16)  # 1.0: untouched slots
    R.reshape_and_cache(k, v, k_ref, v_ref, slots)
    kv_t = tensor(kv, device, dtype)
    k_cache = torch.ones(shape, dtype=torch.float16, device=device)
    v_cache = torch.ones(shape, dtype=torch.float16, device=device)
    ops.reshape_and_cache(kv_t[:, : num_kv_heads * head_dim], kv_t[:, num_kv_heads * head_dim:], k_cache, v_cache,
                          tensor(slots, device))
    np.testing.assert_array_equal(k_cache.cpu().numpy().view(np.uint16), k_ref)
    np.testing.assert_array_equal(v_cache.cpu().numpy().view(np.uint16), v_ref)


def check_paged_attention(ops: SimpleNamespace, device: str, dtype: torch.dtype, head_dim: int,
                          seqs: list[tuple[int, int]]) -> None:
    case = PagedBatch(np.random.default_rng(2), seqs, 9, 3, head_dim, 16)
    q = rounded(case.q, dtype)
    want = R.paged_attention(q, case.k_cache, case.v_cache, case.block_tables, case.query_start_loc,
                             case.context_lens, case.scale)
    out = torch.full(q.shape, float("nan"), dtype=dtype, device=device)
    as_f16 = lambda c: tensor(c.view(np.float16), device)  # noqa: E731
    ops.paged_attention(out, tensor(q, device, dtype), as_f16(case.k_cache), as_f16(case.v_cache),
                        tensor(case.block_tables, device), tensor(case.query_start_loc, device),
                        tensor(case.context_lens, device), float(case.scale))
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(host(out), want, rtol=rtol, atol=atol)


def check_fused_add_rms_norm(ops: SimpleNamespace, device: str, dtype: torch.dtype, hidden: int) -> None:
    r = np.random.default_rng(3)
    residual = r.standard_normal((7, hidden)).astype(np.float32) * 3
    delta = rounded(r.standard_normal((7, hidden)), dtype)
    weight = r.standard_normal(hidden).astype(np.float32)
    res_t = tensor(residual, device)
    out = torch.empty((7, hidden), dtype=dtype, device=device)
    ops.fused_add_rms_norm(res_t, tensor(delta, device, dtype), tensor(weight, device), 1e-5, out)
    summed = (residual.astype(np.float64) + delta).astype(np.float32)
    np.testing.assert_allclose(host(res_t), summed, rtol=1e-6, atol=1e-6)
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(host(out), R.rms_norm(summed, weight, 1e-5), rtol=rtol, atol=4 * atol)
    out_only = torch.empty_like(out)  # delta None: normalise only, residual untouched
    ops.fused_add_rms_norm(res_t, None, tensor(weight, device), 1e-5, out_only)
    np.testing.assert_array_equal(host(out_only), host(out))
    np.testing.assert_allclose(host(res_t), summed, rtol=1e-6, atol=1e-6)


def check_rope(ops: SimpleNamespace, device: str, dtype: torch.dtype, neox: bool) -> None:
    r = np.random.default_rng(4)
    num_heads, num_kv_heads, head_dim = 9, 3, 64
    positions = np.array([0, 1, 17, 255, 4097, 8191, 3], np.int32)
    qkv = rounded(r.standard_normal((len(positions), (num_heads + 2 * num_kv_heads) * head_dim)), dtype)
    qw, kw = num_heads * head_dim, num_kv_heads * head_dim
    want_q = R.rope(qkv[:, :qw].copy(), positions, num_heads, head_dim, 10000.0, neox)
    want_k = R.rope(qkv[:, qw:qw + kw].copy(), positions, num_kv_heads, head_dim, 10000.0, neox)
    qkv_t = tensor(qkv, device, dtype)
    ops.rope(qkv_t[:, :qw], qkv_t[:, qw:qw + kw], tensor(positions, device), head_dim, 10000.0, neox)
    got = host(qkv_t)
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(got[:, :qw], want_q, rtol=rtol, atol=2 * atol)
    np.testing.assert_allclose(got[:, qw:qw + kw], want_k, rtol=rtol, atol=2 * atol)
    np.testing.assert_array_equal(got[:, qw + kw:], qkv[:, qw + kw:])  # v is not rotated


def check_silu_mul(ops: SimpleNamespace, device: str, dtype: torch.dtype, ffn: int) -> None:
    r = np.random.default_rng(5)
    gate_up = rounded(r.standard_normal((5, 2 * ffn)) * 4, dtype)
    out = torch.empty((5, ffn), dtype=dtype, device=device)
    ops.silu_mul(out, tensor(gate_up, device, dtype))
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(host(out), R.silu_mul(gate_up[:, :ffn], gate_up[:, ffn:]), rtol=rtol, atol=atol)


def check_dequant_gemv(ops: SimpleNamespace, device: str, dtype: torch.dtype, wtype: int, num_tokens: int,
                       n: int, k: int) -> None:
    r = np.random.default_rng(6)
    w = make_weight(r, n, k, wtype)
    x = rounded(r.standard_normal((num_tokens, k)), dtype)
    want = R.matmul_dequantized(x, w, wtype)  # the GPU path keeps activations unquantized
    out = torch.empty((num_tokens, n), dtype=dtype, device=device)
    ops.dequant_gemv(out, tensor(x, device, dtype), tensor(w, device), wtype)
    rtol, _ = tolerance(dtype)
    # dot products of k terms of order 1: fp32 sums, then one output rounding relative to |y| ~ sqrt(k)
    np.testing.assert_allclose(host(out), want, rtol=rtol, atol=rtol * np.sqrt(k))
