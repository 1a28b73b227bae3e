"""The torch runner: the forward pass on torch tensors (the GPU path), with the CPU path's
scheduler and blocks.

Same interface as `cpu_runner.CpuModelRunner` (`execute(SchedulerOutput) -> RunnerOutput`,
`forward(BatchInputs)`, `kv_bytes_per_block`), reading the same architecture description
(architecture.py), so the engine, scheduler, block allocator, block tables and slot mapping are
shared unchanged. What differs is where things live:

* the logits stay on the device (a torch tensor): its sampler, `device_sampler.DeviceSampler`,
  picks the tokens there, so only token ids cross to the host each step;
* the KV cache is allocated after the weights (`allocate_kv_cache`), so the engine can size it
  from the device memory left once the weights and one full-size step (`measure_step_bytes`) are in;
* weights are dequantized once at load (by our CPU `dequantize` kernel) to fp16 on the device; Q, K
  and V are fused into one matrix, as are gate and up, so a layer is four cuBLAS matmuls;
* K/V caches are fp16 torch tensors `[num_blocks, num_kv_heads, block_size, head_dim]` per layer;
* the residual stream is fp32 (fused add + RMSNorm writes the fp16 input of the next matmul);
* `ops` is the CUDA extension on a GPU, or `cyserve.kernels.cuda.torch_ops` (same signatures, pure
  torch) on any other device, which is how CI proves this runner's logic without a GPU;
* the CUDA attention kernel has no sliding window yet, so a model with local layers (Gemma 3) is
  refused on CUDA with a ModelLoadError (it runs on the CPU and on torch's other devices); the
  GELU(tanh) gate is plain torch on every device.

torch is imported by this module only; the engine imports it only when the device is not the CPU.
"""
from __future__ import annotations

from types import ModuleType, SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from cyserve.fastpath.errors import ModelLoadError
from cyserve.fastpath.model.architecture import Activation, RopeStyle
from cyserve.fastpath.model.batch import BatchInputs, build_inputs
from cyserve.fastpath.model.device_sampler import DeviceSampler
from cyserve.fastpath.model.runner import RunnerBase, kv_bytes_per_block
from cyserve.fastpath.model.weights import ModelWeights, Weight, WeightType

OP_NAMES = ("reshape_and_cache", "paged_attention", "fused_add_rms_norm", "rope", "silu_mul", "dequant_gemv")
GEMV_WTYPES = (WeightType.Q4_0, WeightType.Q4_1, WeightType.Q8_0)
GEMV_MAX_TOKENS = 8  # the fused dequantizing GEMV's limit; larger batches go to cuBLAS


def torch_ops() -> SimpleNamespace:
    """The pure-torch ops (any device)."""
    from cyserve.kernels.cuda import torch_ops as mod

    return _namespace(mod)


def cuda_ops() -> SimpleNamespace:
    """The compiled CUDA ops; raises CudaUnavailableError (with the fix) when they cannot run."""
    from cyserve.kernels.cuda import require

    return _namespace(require())


def _namespace(mod: ModuleType) -> SimpleNamespace:
    return SimpleNamespace(**{name: getattr(mod, name) for name in OP_NAMES})


def _dequantized(weights: list[Weight]) -> np.ndarray:
    """f32[sum(rows), cols]: the weights stacked, each decoded by the CPU kernel."""
    from cyserve.kernels.cpu.quant_matmul import dequantize

    return np.concatenate([dequantize(w.data, int(w.wtype), w.cols) for w in weights])


def _vector(values: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    return None if values is None else torch.from_numpy(np.array(values, dtype=np.float32)).to(device)


class _Linear:
    """One (possibly fused) weight on the device: fp16 for cuBLAS, raw GGUF rows for the GEMV,
    and its bias (the parts' biases concatenated) when the architecture has one."""

    def __init__(self, weights: list[Weight], device: torch.device, dtype: torch.dtype, keep_raw: bool,
                 biases: list[np.ndarray | None] | None = None) -> None:
        self.weight = torch.from_numpy(_dequantized(weights)).to(device=device, dtype=dtype)  # [N, K]
        self.bias = None
        if biases and biases[0] is not None:
            self.bias = _vector(np.concatenate(biases), device).to(dtype)
        wtypes = {w.wtype for w in weights}
        self.wtype = wtypes.pop() if len(wtypes) == 1 else None
        self.raw = None  # uint8[N, row_bytes]
        if keep_raw and self.wtype in GEMV_WTYPES:
            self.raw = torch.from_numpy(np.concatenate([w.data for w in weights])).to(device)


def _gelu_tanh_mul(out: torch.Tensor, gate_up: torch.Tensor) -> None:
    from cyserve.kernels.cuda import torch_ops as mod  # plain torch: any device

    mod.gelu_tanh_mul(out, gate_up)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, width: int) -> torch.Tensor:
    """RMSNorm over groups of `width` columns of x[T, n] (width = head_dim: per head), in fp32."""
    rows = x.reshape(x.shape[0], -1, width).float()
    rows = rows * torch.rsqrt(rows.pow(2).mean(-1, keepdim=True) + eps) * weight
    return rows.reshape(x.shape).to(x.dtype)


class TorchModelRunner(RunnerBase):
    def __init__(self, model: ModelWeights, num_blocks: int, block_size: int, device: str = "cuda",
                 dtype: torch.dtype | None = None, ops: SimpleNamespace | None = None,
                 use_gemv: bool = False) -> None:
        """`num_blocks` 0 loads the weights only: call `allocate_kv_cache` before `forward`.
        `dtype` (activations and weights): fp16 on a GPU, the CUDA kernels' dtype; float32 on
        other devices, where torch's fp16 matmuls are slow. `use_gemv` also keeps the raw quantized
        rows on the device and sends batches of <= 8 tokens through the dequantizing GEMV."""
        cfg = model.config
        self.model, self.cfg, self.arch, self.block_size = model, cfg, model.arch, block_size
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        self.dtype = dtype or (torch.float16 if on_gpu else torch.float32)
        self.ops = ops or (cuda_ops() if on_gpu else torch_ops())
        self.use_gemv = use_gemv
        self.scale = cfg.query_scale
        self.attention = model.layer_attention
        if on_gpu and any(la.window for la in self.attention):
            raise ModelLoadError(model.path, f"{model.arch.name} has sliding-window (local) attention "
                                 f"layers, which the CUDA attention kernel does not bound yet: serve "
                                 f"it on the CPU (--device cpu)")
        if on_gpu and model.rope_freqs is not None:
            raise ModelLoadError(model.path, "rotary frequency factors (rope_freqs, Llama 3.1 rope scaling) "
                                 "are not in the CUDA rope kernel yet: serve it on the CPU (--device cpu)")
        self.rope_freqs = (() if model.rope_freqs is None  # only torch_ops take them (see above)
                           else (torch.from_numpy(np.array(model.rope_freqs, dtype=np.float32)).to(self.device),))
        self.act = self.ops.silu_mul if model.arch.activation is Activation.SILU else _gelu_tanh_mul
        dev, dt = self.device, self.dtype
        self.embedding = _Linear([model.token_embd], dev, dt, False).weight  # [vocab, hidden]
        self.output = (self.embedding if model.output is model.token_embd
                       else _Linear([model.output], dev, dt, False).weight)
        vec = lambda a: _vector(a, dev)  # noqa: E731
        self.layers = [
            SimpleNamespace(
                attn_norm=vec(layer.attn_norm), ffn_norm=vec(layer.ffn_norm),
                q_norm=vec(layer.q_norm), k_norm=vec(layer.k_norm),
                post_attn_norm=vec(layer.post_attn_norm), post_ffn_norm=vec(layer.post_ffn_norm),
                qkv=_Linear([layer.wq, layer.wk, layer.wv], dev, dt, use_gemv, [layer.bq, layer.bk, layer.bv]),
                wo=_Linear([layer.wo], dev, dt, use_gemv),
                gate_up=_Linear([layer.w_gate, layer.w_up], dev, dt, use_gemv),
                down=_Linear([layer.w_down], dev, dt, use_gemv),
            )
            for layer in model.layers
        ]
        self.output_norm = vec(model.output_norm)
        self.sampler = DeviceSampler(self.device)
        self.k_caches: list[torch.Tensor] = []
        self.v_caches: list[torch.Tensor] = []
        self.decode_graphs = None  # cuda_graphs.DecodeGraphs once capture_decode_graphs ran
        if num_blocks:
            self.allocate_kv_cache(num_blocks)

    @staticmethod
    def kv_bytes_per_block(model: ModelWeights, block_size: int) -> int:
        return kv_bytes_per_block(model.config, block_size)

    @property
    def num_blocks(self) -> int:
        return self.k_caches[0].shape[0] if self.k_caches else 0

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Zeroed K and V caches of num_blocks blocks per layer (replacing any before)."""
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        cfg = self.cfg
        self.decode_graphs = None  # they bind the old cache
        self.k_caches, self.v_caches = [], []  # drop the old ones before the new ones take memory
        shape = (num_blocks, cfg.num_kv_heads, self.block_size, cfg.head_dim)
        for caches in (self.k_caches, self.v_caches):
            caches.extend(torch.zeros(shape, dtype=torch.float16, device=self.device) for _ in range(cfg.num_layers))

    def measure_step_bytes(self, num_tokens: int, num_logit_rows: int) -> int:
        """Device memory one step of num_tokens prompt tokens (logits for the last num_logit_rows)
        takes beyond the weights and the KV cache: its activations, measured by running it on a
        scratch cache, before `allocate_kv_cache`. 0 off CUDA, where nothing is measured."""
        if self.k_caches:
            raise RuntimeError("measure_step_bytes runs before allocate_kv_cache (it uses a scratch cache)")
        num_tokens = max(num_tokens, 1)
        blocks = list(range(-(-num_tokens // self.block_size)))
        ids = [i % self.cfg.vocab_size for i in range(num_tokens)]
        inputs = build_inputs([(ids, 0, num_tokens, blocks, True)], self.block_size)
        rows = min(max(num_logit_rows, 1), num_tokens)
        inputs.logits_indices = np.arange(num_tokens - rows, num_tokens, dtype=np.int64)
        on_gpu = self.device.type == "cuda"
        self.allocate_kv_cache(len(blocks))
        try:
            if on_gpu:
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                base = torch.cuda.memory_allocated(self.device)
            self.forward(inputs)
            if not on_gpu:
                return 0
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - base)
        finally:
            self.k_caches, self.v_caches = [], []
            if on_gpu:
                torch.cuda.empty_cache()

    def device_memory(self) -> tuple[int, int]:
        """(free, total) bytes of this runner's GPU as the driver counts them (all processes); of
        the host's memory on the CPU device."""
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)
        from cyserve.fastpath.host_memory import available_memory_bytes, total_memory_bytes

        return available_memory_bytes(), total_memory_bytes()

    def _linear(self, x: torch.Tensor, lin: _Linear) -> torch.Tensor:
        if lin.raw is not None and x.shape[0] <= GEMV_MAX_TOKENS:
            out = torch.empty((x.shape[0], lin.weight.shape[0]), dtype=x.dtype, device=x.device)
            self.ops.dequant_gemv(out, x.contiguous(), lin.raw, int(lin.wtype))
            return out if lin.bias is None else out.add_(lin.bias)
        return F.linear(x, lin.weight, lin.bias)

    def _post_norm(self, delta: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        return delta if weight is None else _rms_norm(delta, weight, self.cfg.rms_norm_eps, delta.shape[-1])

    def _to_device(self, inputs: BatchInputs) -> list[torch.Tensor]:
        """The step's int32 arrays on the device in one host-to-device copy (one buffer, then views)."""
        parts = [inputs.token_ids, inputs.positions, inputs.slot_mapping, inputs.block_tables.reshape(-1),
                 inputs.query_start_loc, inputs.context_lens, inputs.logits_indices]
        flat = np.concatenate([np.asarray(p, dtype=np.int32).reshape(-1) for p in parts])
        buf = torch.from_numpy(flat)
        if self.device.type == "cuda":
            buf = buf.pin_memory().to(self.device, non_blocking=True)
        views = list(torch.split(buf, [len(p.reshape(-1)) for p in parts]))
        views[3] = views[3].view(inputs.block_tables.shape)
        return views

    def capture_decode_graphs(self, max_num_seqs: int, max_blocks_per_seq: int) -> list[int]:
        """Capture the decode step as CUDA graphs (see cuda_graphs.py): batches of up to
        max_num_seqs single-token rows then replay a graph instead of launching ~10 kernels per
        layer from Python. Returns the captured batch sizes. CUDA only; after allocate_kv_cache."""
        from cyserve.fastpath.model.cuda_graphs import DecodeGraphs

        if self.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device, not {self.device}")
        if not self.k_caches:
            raise RuntimeError("capture_decode_graphs runs after allocate_kv_cache (the graphs bind the cache)")
        graphs = DecodeGraphs(self._forward_tensors, self.device, max_num_seqs, max_blocks_per_seq)
        graphs.capture()
        self.decode_graphs = graphs
        return graphs.batch_sizes

    @torch.inference_mode()
    def forward(self, inputs: BatchInputs) -> torch.Tensor:
        """Logits f32[R, vocab], on the device, for the rows in inputs.logits_indices."""
        if not self.k_caches:
            raise RuntimeError("no KV cache: call allocate_kv_cache(num_blocks) first")
        if self.decode_graphs is not None:
            logits = self.decode_graphs.replay(inputs)
            if logits is not None:
                return logits
        return self._forward_tensors(*self._to_device(inputs))

    def _forward_tensors(self, token_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
                         block_tables: torch.Tensor, query_start_loc: torch.Tensor, context_lens: torch.Tensor,
                         logits_indices: torch.Tensor) -> torch.Tensor:
        """The pass on device tensors: no host synchronisation and shapes fixed by the inputs', so a
        CUDA graph can capture it."""
        cfg, ops, arch = self.cfg, self.ops, self.arch
        num_tokens = token_ids.shape[0]
        q_width, kv_width = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        neox = arch.rope_style is RopeStyle.NEOX

        h = self.embedding[token_ids].float()                                      # [T, hidden] fp32 residual
        if arch.scale_embeddings:
            h *= float(np.sqrt(cfg.hidden_size))
        x = torch.empty((num_tokens, cfg.hidden_size), dtype=self.dtype, device=self.device)
        attn = torch.empty((num_tokens, q_width), dtype=self.dtype, device=self.device)
        act = torch.empty((num_tokens, cfg.intermediate_size), dtype=self.dtype, device=self.device)
        delta = None  # the previous sublayer's output, added to h by the next fused norm
        for layer, la, k_cache, v_cache in zip(self.layers, self.attention, self.k_caches, self.v_caches):
            ops.fused_add_rms_norm(h, delta, layer.attn_norm, cfg.rms_norm_eps, x)
            qkv = self._linear(x, layer.qkv)                                       # [T, q + 2 kv]
            q, k = qkv[:, :q_width], qkv[:, q_width:q_width + kv_width]
            v = qkv[:, q_width + kv_width:]
            if layer.q_norm is not None:  # per head; new tensors, so rope may work in place
                q = _rms_norm(q, layer.q_norm, cfg.rms_norm_eps, cfg.head_dim)
                k = _rms_norm(k, layer.k_norm, cfg.rms_norm_eps, cfg.head_dim)
            ops.rope(q, k, positions, cfg.head_dim, la.rope_theta, neox, *self.rope_freqs)
            ops.reshape_and_cache(k, v, k_cache, v_cache, slot_mapping)
            window = (la.window,) if la.window else ()  # only torch_ops bound a window (see __init__)
            ops.paged_attention(attn, q, k_cache, v_cache, block_tables, query_start_loc, context_lens,
                                self.scale, *window)
            attn_out = self._post_norm(self._linear(attn, layer.wo), layer.post_attn_norm)
            ops.fused_add_rms_norm(h, attn_out, layer.ffn_norm, cfg.rms_norm_eps, x)
            self.act(act, self._linear(x, layer.gate_up))                          # [T, ffn]
            delta = self._post_norm(self._linear(act, layer.down), layer.post_ffn_norm)
        last = torch.empty((num_tokens, cfg.hidden_size), dtype=self.dtype, device=self.device)
        ops.fused_add_rms_norm(h, delta, self.output_norm, cfg.rms_norm_eps, last)
        logits = F.linear(last[logits_indices], self.output).float()               # [R, vocab]
        if cfg.final_logit_softcap:
            logits = torch.tanh(logits / cfg.final_logit_softcap) * cfg.final_logit_softcap
        return logits
