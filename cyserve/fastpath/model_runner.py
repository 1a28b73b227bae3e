"""Runs the llama forward pass for one scheduled batch on the CPU kernels.

All tokens of all scheduled sequences form one `[T, hidden]` matrix, so each weight is read once
per step, not once per sequence. The runner owns the KV storage: per layer, K and V arrays shaped
`[num_blocks, num_kv_heads, block_size, head_dim]` in float16, addressed by the allocator's block ids.

Two loops over the layers share that storage: the native one (`llama_forward.LlamaForward`, the
whole pass in one call without the GIL; the serving path) and a Python one that calls the kernels
one by one (kept for the numpy reference kernels, the oracle path, and to check the native loop).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from types import SimpleNamespace

from cyserve.fastpath.gguf_model import GGUFModel, Weight
from cyserve.fastpath.llama_forward import LlamaForward

KERNEL_NAMES = ("matmul", "get_rows", "rms_norm", "rope", "reshape_and_cache", "paged_attention", "silu_mul", "add")


def cpu_kernels() -> SimpleNamespace:
    """The compiled C kernels (SIMD where the CPU has it)."""
    from cyserve.kernels.cpu import activation, attention, norm, quant_matmul, rope

    mods = (quant_matmul, quant_matmul, norm, rope, attention, attention, activation, activation)
    return SimpleNamespace(**{n: getattr(m, n) for n, m in zip(KERNEL_NAMES, mods)})


def reference_kernels() -> SimpleNamespace:
    """numpy twins of every kernel: slow, obviously correct; for checking the fast path."""
    from cyserve.kernels import reference

    return SimpleNamespace(**{n: getattr(reference, n) for n in KERNEL_NAMES})


class LogitRows(enum.IntEnum):
    """Which of a scheduled sequence's new rows need next-token logits. NONE and LAST equal False
    and True, so a plain bool still works."""

    NONE = 0  # a prefill chunk that does not end the prompt
    LAST = 1  # the row to sample from
    ALL = 2  # every new row: prompt logprobs score each prompt token


@dataclass
class BatchInputs:
    """Flattened step inputs: the kernel API's view of a SchedulerOutput."""

    token_ids: np.ndarray  # i32[T]
    positions: np.ndarray  # i32[T]
    slot_mapping: np.ndarray  # i32[T]
    block_tables: np.ndarray  # i32[S, max_blocks]
    query_start_loc: np.ndarray  # i32[S+1]
    context_lens: np.ndarray  # i32[S]
    logits_indices: np.ndarray  # i64[R]: rows of T whose next-token logits are needed
    # i32[S+1]: sequence s owns logits rows logits_start_loc[s]:logits_start_loc[s+1] of forward()'s
    # result (none, its last row, or all of its rows, per its LogitRows)
    logits_start_loc: np.ndarray | None = None


def build_inputs(scheduled: list, block_size: int) -> BatchInputs:
    """`scheduled` holds (token_ids, num_computed, num_new, block_ids, logit_rows) per sequence;
    logit_rows is a LogitRows (or a bool: True = LAST)."""
    tokens, positions, slots, starts, ctx, logit_rows = [], [], [], [0], [], []
    logit_starts = [0]
    max_blocks = max(len(s[3]) for s in scheduled)
    tables = np.zeros((len(scheduled), max_blocks), dtype=np.int32)
    for i, (token_ids, start, n, block_ids, wants_logits) in enumerate(scheduled):
        pos = np.arange(start, start + n, dtype=np.int32)
        tokens.append(np.asarray(token_ids[start:start + n], dtype=np.int32))
        positions.append(pos)
        blocks = np.asarray(block_ids, dtype=np.int32)
        slots.append(blocks[pos // block_size] * block_size + pos % block_size)
        tables[i, : len(block_ids)] = blocks
        starts.append(starts[-1] + n)
        ctx.append(start + n)
        if wants_logits == LogitRows.ALL:
            logit_rows.append(np.arange(starts[-2], starts[-1], dtype=np.int64))
        elif wants_logits:
            logit_rows.append(np.asarray([starts[-1] - 1], dtype=np.int64))
        logit_starts.append(logit_starts[-1] + (len(logit_rows[-1]) if wants_logits else 0))
    cat = lambda xs: np.ascontiguousarray(np.concatenate(xs), dtype=np.int32)  # noqa: E731
    return BatchInputs(
        token_ids=cat(tokens),
        positions=cat(positions),
        slot_mapping=cat(slots),
        block_tables=tables,
        query_start_loc=np.asarray(starts, dtype=np.int32),
        context_lens=np.asarray(ctx, dtype=np.int32),
        logits_indices=(np.concatenate(logit_rows) if logit_rows else np.zeros(0, dtype=np.int64)),
        logits_start_loc=np.asarray(logit_starts, dtype=np.int32),
    )


class ModelRunner:
    """Owns the KV caches and runs forward passes over them.

    kernels=None: the compiled CPU kernels, driven by the native loop. Any other kernel namespace
    (e.g. reference_kernels()) is driven by the Python loop. max_num_tokens sizes the native
    loop's workspace up front (the scheduler's token budget); a bigger batch grows it once.
    """

    def __init__(self, model: GGUFModel, num_blocks: int, block_size: int,
                 kernels: SimpleNamespace | None = None, max_num_tokens: int = 256) -> None:
        cfg = model.config
        self.ops = kernels or cpu_kernels()
        self.model = model
        self.cfg = cfg
        self.block_size = block_size
        shape = (num_blocks, cfg.num_kv_heads, block_size, cfg.head_dim)
        self.k_caches = [np.zeros(shape, dtype=np.float16) for _ in range(cfg.num_layers)]
        self.v_caches = [np.zeros(shape, dtype=np.float16) for _ in range(cfg.num_layers)]
        self.scale = 1.0 / float(np.sqrt(cfg.head_dim))
        self.native: LlamaForward | None = None
        if kernels is None:
            self.native = LlamaForward(model, self.k_caches, self.v_caches, block_size, max_num_tokens)

    @staticmethod
    def kv_bytes_per_block(model: GGUFModel, block_size: int) -> int:
        cfg = model.config
        return 2 * cfg.num_layers * cfg.num_kv_heads * block_size * cfg.head_dim * 2

    def forward(self, inputs: BatchInputs) -> np.ndarray:
        """Logits f32[R, vocab] for the rows in inputs.logits_indices (any R, rows may repeat)."""
        if self.native is None:
            return self.forward_python(inputs)
        return self.native.forward(inputs.token_ids, inputs.positions, inputs.slot_mapping,
                                   inputs.block_tables, inputs.query_start_loc,
                                   inputs.context_lens, inputs.logits_indices)

    def _linear(self, x: np.ndarray, w: Weight) -> np.ndarray:
        out = np.empty((x.shape[0], w.rows), dtype=np.float32)
        self.ops.matmul(x, w.data, int(w.wtype), out)
        return out

    def forward_python(self, inputs: BatchInputs) -> np.ndarray:
        """The same pass as `forward`, one kernel call at a time from Python, on self.ops."""
        cfg, ops = self.cfg, self.ops
        num_tokens = inputs.token_ids.shape[0]
        h = np.empty((num_tokens, cfg.hidden_size), dtype=np.float32)  # [T, hidden]
        emb = self.model.token_embd
        ops.get_rows(emb.data, int(emb.wtype), emb.cols, inputs.token_ids, h)
        x = np.empty_like(h)
        attn = np.empty((num_tokens, cfg.num_heads * cfg.head_dim), dtype=np.float32)
        for layer, kc, vc in zip(self.model.layers, self.k_caches, self.v_caches):
            ops.rms_norm(h, layer.attn_norm, cfg.rms_norm_eps, x)
            q = self._linear(x, layer.wq)  # [T, heads * head_dim]
            k = self._linear(x, layer.wk)  # [T, kv_heads * head_dim]
            v = self._linear(x, layer.wv)
            ops.rope(q, inputs.positions, cfg.num_heads, cfg.head_dim, cfg.rope_theta, False)
            ops.rope(k, inputs.positions, cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta, False)
            kc16, vc16 = kc.view(np.uint16), vc.view(np.uint16)
            ops.reshape_and_cache(k, v, kc16, vc16, inputs.slot_mapping)
            ops.paged_attention(q, kc16, vc16, inputs.block_tables, inputs.query_start_loc,
                                inputs.context_lens, self.scale, attn)
            ops.add(h, self._linear(attn, layer.wo))
            ops.rms_norm(h, layer.ffn_norm, cfg.rms_norm_eps, x)
            gate = self._linear(x, layer.w_gate)  # [T, ffn]
            up = self._linear(x, layer.w_up)
            ops.silu_mul(gate, up, gate)
            ops.add(h, self._linear(gate, layer.w_down))
        last = np.ascontiguousarray(h[inputs.logits_indices])  # [R, hidden]
        ops.rms_norm(last, self.model.output_norm, cfg.rms_norm_eps, last)
        return self._linear(last, self.model.output)  # [R, vocab]
