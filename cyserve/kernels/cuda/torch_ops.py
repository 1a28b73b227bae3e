"""Pure-torch twins of the CUDA extension's ops: same names, same arguments, same out-params.

They run on any torch device, so the torch model runner can be exercised where no GPU exists (CI),
and they are readable: each is the definition the CUDA kernel implements. Slow (attention loops
over sequences on the host); never the serving path on a GPU.

Where the CUDA ops require fp16 activations, these accept any float dtype; the KV cache is fp16
[num_blocks, num_kv_heads, block_size, head_dim] everywhere. Scores and norms are computed in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reshape_and_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      slot_mapping: torch.Tensor) -> None:
    """Row t of k/v ([T, Hkv*Dh]) goes to cache slot slot_mapping[t]; -1 = skip."""
    _, num_kv_heads, block_size, head_dim = k_cache.shape
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // block_size, slots % block_size
    # two index tensors around a slice: the indexed view is [n, Hkv, Dh]
    k_cache[blocks, :, offsets, :] = k[keep].reshape(-1, num_kv_heads, head_dim).to(k_cache.dtype)
    v_cache[blocks, :, offsets, :] = v[keep].reshape(-1, num_kv_heads, head_dim).to(v_cache.dtype)


def _gather(cache: torch.Tensor, table: torch.Tensor, context_len: int) -> torch.Tensor:
    """[Hkv, ctx, Dh] fp32 of one sequence, read through its block table."""
    block_size = cache.shape[2]
    num = (context_len + block_size - 1) // block_size
    c = cache[table[:num].long()].float()                       # [num, Hkv, BS, Dh]
    return c.permute(1, 0, 2, 3).reshape(c.shape[1], -1, c.shape[3])[:, :context_len]


def paged_attention(out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, query_start_loc: torch.Tensor, context_lens: torch.Tensor,
                    scale: float, window: int = 0) -> None:
    """Causal GQA over the paged cache: sequence s's rows are its last q_len tokens (see cys_cuda.h).
    window > 0: the query at position p sees keys p - window + 1..p only (a local layer)."""
    _, num_kv_heads, _, head_dim = k_cache.shape
    num_heads = q.shape[1] // head_dim
    group = num_heads // num_kv_heads
    starts, ctx_lens = query_start_loc.tolist(), context_lens.tolist()
    for s, context_len in enumerate(ctx_lens):
        start, end = starts[s], starts[s + 1]
        q_len = end - start
        if q_len == 0:
            continue
        keys = _gather(k_cache, block_tables[s], context_len).repeat_interleave(group, dim=0)    # [Hq, ctx, Dh]
        values = _gather(v_cache, block_tables[s], context_len).repeat_interleave(group, dim=0)
        qs = q[start:end].float().reshape(q_len, num_heads, head_dim).transpose(0, 1)           # [Hq, q_len, Dh]
        scores = qs @ keys.transpose(1, 2) * scale                                              # [Hq, q_len, ctx]
        pos = context_len - q_len + torch.arange(q_len, device=q.device)
        keys = torch.arange(context_len, device=q.device)[None, :]
        masked = keys > pos[:, None]
        if window:
            masked |= keys <= pos[:, None] - window
        scores = scores.masked_fill(masked, float("-inf"))
        res = torch.softmax(scores, dim=-1) @ values                                            # [Hq, q_len, Dh]
        out[start:end] = res.transpose(0, 1).reshape(q_len, num_heads * head_dim).to(out.dtype)


def fused_add_rms_norm(residual: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float,
                       out: torch.Tensor) -> None:
    """residual (fp32) += delta; out = rms_norm(residual) * weight."""
    if delta is not None:
        residual += delta.float()
    inv = torch.rsqrt(residual.pow(2).mean(dim=-1, keepdim=True) + eps)
    out.copy_(residual * inv * weight)


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, head_dim: int, theta: float,
         neox: bool, freq_factors: torch.Tensor | None = None) -> None:
    """Rotate q and k in place; angles in float64 as in the CUDA kernel. freq_factors ([Dh/2])
    divide each pair's frequency (Llama 3.1's rope_freqs); None: none."""
    inv_freq = float(theta) ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=q.device) / head_dim)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.to(device=q.device, dtype=torch.float64)
    angle = positions.to(torch.float64)[:, None] * inv_freq[None, :]                    # [T, Dh/2]
    cos, sin = angle.cos().float()[:, None, :], angle.sin().float()[:, None, :]
    for x in (q, k):
        xh = x.float().reshape(x.shape[0], -1, head_dim)                                 # [T, H, Dh]
        if neox:
            x0, x1 = xh[..., : head_dim // 2], xh[..., head_dim // 2:]
        else:
            x0, x1 = xh[..., 0::2], xh[..., 1::2]
        r0, r1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        res = torch.cat([r0, r1], dim=-1) if neox else torch.stack([r0, r1], dim=-1).flatten(-2)
        x.copy_(res.reshape(x.shape))


def silu_mul(out: torch.Tensor, gate_up: torch.Tensor) -> None:
    """out = silu(gate) * up over gate_up = [gate | up]."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    out.copy_(F.silu(gate) * up)


def gelu_tanh_mul(out: torch.Tensor, gate_up: torch.Tensor) -> None:
    """out = gelu_tanh(gate) * up over gate_up = [gate | up] (GELU's tanh approximation)."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    out.copy_(F.gelu(gate, approximate="tanh") * up)


def dequant_gemv(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, wtype: int) -> None:
    """out = x @ W^T with W the raw GGUF rows (dequantized here by the numpy reference)."""
    from cyserve.kernels.reference import dequantize

    weight = torch.from_numpy(dequantize(w.cpu().numpy(), wtype, x.shape[1])).to(x.device)
    out.copy_(x.float() @ weight.T)
