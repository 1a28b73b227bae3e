"""The numpy reference forward: the oracle the native loop and the torch runner are checked against.

One kernel call at a time from Python, on a kernel namespace (`cpu_runner.reference_kernels()`,
the numpy twins of kernels/reference.py, or the compiled kernels for checking the native loop's
glue), reading the same architecture description as every other backend (architecture.py).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from cyserve.fastpath.model.architecture import Activation, RopeStyle
from cyserve.fastpath.model.batch import BatchInputs
from cyserve.fastpath.model.weights import ModelWeights, Weight


class ReferenceForward:
    """embedding -> layers -> final norm -> logits over the caller's fp16 KV caches."""

    def __init__(self, model: ModelWeights, k_caches: list[np.ndarray], v_caches: list[np.ndarray],
                 kernels: SimpleNamespace) -> None:
        self.model, self.cfg, self.arch, self.ops = model, model.config, model.arch, kernels
        self.k_caches, self.v_caches = k_caches, v_caches
        self.scale = self.cfg.query_scale

    def _linear(self, x: np.ndarray, w: Weight, bias: np.ndarray | None = None) -> np.ndarray:
        out = np.empty((x.shape[0], w.rows), dtype=np.float32)
        self.ops.matmul(x, w.data, int(w.wtype), out)
        if bias is not None:
            out += bias
        return out

    def _head_norm(self, x: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
        """RMSNorm of each head of x[T, heads * head_dim] (qk_norm); x itself when there is none."""
        if weight is None:
            return x
        heads = x.reshape(-1, self.cfg.head_dim)
        self.ops.rms_norm(heads, weight, self.cfg.rms_norm_eps, heads)
        return x

    def _residual(self, h: np.ndarray, delta: np.ndarray, post_norm: np.ndarray | None) -> None:
        if post_norm is not None:
            self.ops.rms_norm(delta, post_norm, self.cfg.rms_norm_eps, delta)
        self.ops.add(h, delta)

    def forward(self, inputs: BatchInputs) -> np.ndarray:
        """Logits f32[R, vocab] for the rows in inputs.logits_indices; writes this step's K/V."""
        cfg, arch, ops = self.cfg, self.arch, self.ops
        num_tokens = inputs.token_ids.shape[0]
        neox = arch.rope_style is RopeStyle.NEOX
        h = np.empty((num_tokens, cfg.hidden_size), dtype=np.float32)  # [T, hidden]
        emb = self.model.token_embd
        ops.get_rows(emb.data, int(emb.wtype), emb.cols, inputs.token_ids, h)
        if arch.scale_embeddings:
            h *= np.float32(np.sqrt(cfg.hidden_size))
        x = np.empty_like(h)
        attn = np.empty((num_tokens, cfg.num_heads * cfg.head_dim), dtype=np.float32)
        act = ops.gelu_tanh_mul if arch.activation is Activation.GELU_TANH else ops.silu_mul
        for layer, la, kc, vc in zip(self.model.layers, self.model.layer_attention, self.k_caches,
                                     self.v_caches):
            ops.rms_norm(h, layer.attn_norm, cfg.rms_norm_eps, x)
            q = self._head_norm(self._linear(x, layer.wq, layer.bq), layer.q_norm)  # [T, heads * head_dim]
            k = self._head_norm(self._linear(x, layer.wk, layer.bk), layer.k_norm)  # [T, kv_heads * head_dim]
            v = self._linear(x, layer.wv, layer.bv)
            ops.rope(q, inputs.positions, cfg.num_heads, cfg.head_dim, la.rope_theta, neox, self.model.rope_freqs)
            ops.rope(k, inputs.positions, cfg.num_kv_heads, cfg.head_dim, la.rope_theta, neox, self.model.rope_freqs)
            kc16, vc16 = kc.view(np.uint16), vc.view(np.uint16)
            ops.reshape_and_cache(k, v, kc16, vc16, inputs.slot_mapping)
            ops.paged_attention(q, kc16, vc16, inputs.block_tables, inputs.query_start_loc,
                                inputs.context_lens, self.scale, attn, window=la.window)
            self._residual(h, self._linear(attn, layer.wo), layer.post_attn_norm)
            ops.rms_norm(h, layer.ffn_norm, cfg.rms_norm_eps, x)
            gate = self._linear(x, layer.w_gate)  # [T, ffn]
            up = self._linear(x, layer.w_up)
            act(gate, up, gate)
            self._residual(h, self._linear(gate, layer.w_down), layer.post_ffn_norm)
        last = np.ascontiguousarray(h[inputs.logits_indices])  # [R, hidden]
        ops.rms_norm(last, self.model.output_norm, cfg.rms_norm_eps, last)
        logits = self._linear(last, self.model.output)  # [R, vocab]
        if cfg.final_logit_softcap:
            cap = np.float32(cfg.final_logit_softcap)
            logits = (cap * np.tanh(logits / cap)).astype(np.float32)
        return logits
