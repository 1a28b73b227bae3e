"""The CPU runner: fp16 KV storage on the host, a CPU forward, and the Cython sampler.

All tokens of all scheduled sequences form one `[T, hidden]` matrix, so each weight is read once
per step, not once per sequence. The runner owns the KV storage: per layer, K and V arrays shaped
`[num_blocks, num_kv_heads, block_size, head_dim]` in float16, addressed by the allocator's block ids.

Its forward is the native loop (`cpu_forward.CpuForward`: the whole pass in one call without the
GIL; the serving path), or, given a kernel namespace, the numpy reference forward
(`reference_forward.ReferenceForward`) driven by those kernels: the oracle path.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from cyserve.fastpath.model.batch import BatchInputs
from cyserve.fastpath.model.cpu_forward import CpuForward
from cyserve.fastpath.model.cpu_sampler import CpuSampler
from cyserve.fastpath.model.reference_forward import ReferenceForward
from cyserve.fastpath.model.runner import RunnerBase, kv_bytes_per_block
from cyserve.fastpath.model.weights import ModelWeights

KERNEL_NAMES = ("matmul", "get_rows", "rms_norm", "rope", "reshape_and_cache", "paged_attention", "silu_mul",
                "gelu_tanh_mul", "add")


def cpu_kernels() -> SimpleNamespace:
    """The compiled C kernels (SIMD where the CPU has it)."""
    from cyserve.kernels.cpu import activation, attention, norm, quant_matmul, rope

    mods = (quant_matmul, quant_matmul, norm, rope, attention, attention, activation, activation, activation)
    return SimpleNamespace(**{n: getattr(m, n) for n, m in zip(KERNEL_NAMES, mods)})


def reference_kernels() -> SimpleNamespace:
    """numpy twins of every kernel: slow, obviously correct; for checking the fast path."""
    from cyserve.kernels import reference

    return SimpleNamespace(**{n: getattr(reference, n) for n in KERNEL_NAMES})


class CpuModelRunner(RunnerBase):
    """Owns the KV caches, a forward over them and the CPU sampler.

    kernels=None: the compiled CPU kernels, driven by the native loop. Any other kernel namespace
    (e.g. reference_kernels()) is driven by the reference forward. max_num_tokens sizes the native
    loop's workspace up front (the scheduler's token budget); a bigger batch grows it once.
    """

    def __init__(self, model: ModelWeights, num_blocks: int, block_size: int,
                 kernels: SimpleNamespace | None = None, max_num_tokens: int = 256) -> None:
        cfg = model.config
        self.model, self.cfg, self.block_size = model, cfg, block_size
        self.sampler = CpuSampler()
        shape = (num_blocks, cfg.num_kv_heads, block_size, cfg.head_dim)
        self.k_caches = [np.zeros(shape, dtype=np.float16) for _ in range(cfg.num_layers)]
        self.v_caches = [np.zeros(shape, dtype=np.float16) for _ in range(cfg.num_layers)]
        self.native: CpuForward | None = None
        self.reference: ReferenceForward | None = None
        if kernels is None:
            self.native = CpuForward(model, self.k_caches, self.v_caches, block_size, max_num_tokens)
        else:
            self.reference = ReferenceForward(model, self.k_caches, self.v_caches, kernels)

    @staticmethod
    def kv_bytes_per_block(model: ModelWeights, block_size: int) -> int:
        return kv_bytes_per_block(model.config, block_size)

    def forward_python(self, inputs: BatchInputs) -> np.ndarray:
        """The reference forward over this runner's caches: with its kernels, or the compiled ones
        (to check the native loop's glue: same kernels, same order, same bits)."""
        if self.reference is None:
            self.reference = ReferenceForward(self.model, self.k_caches, self.v_caches, cpu_kernels())
        return self.reference.forward(inputs)

    def forward(self, inputs: BatchInputs) -> np.ndarray:
        """Logits f32[R, vocab] for the rows in inputs.logits_indices (any R, rows may repeat)."""
        if self.native is None:
            return self.forward_python(inputs)
        return self.native.forward(inputs.token_ids, inputs.positions, inputs.slot_mapping,
                                   inputs.block_tables, inputs.query_start_loc,
                                   inputs.context_lens, inputs.logits_indices)
