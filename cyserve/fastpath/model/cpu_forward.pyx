"""The CPU forward pass as one native call with the GIL released.

`CpuForward` reads the model's architecture description (architecture.py) once, at construction,
into flags and pointers (NULL for a feature the architecture lacks), and holds raw pointers to a
ModelWeights' weights, the runner's per-layer fp16 KV caches
and one preallocated f32 workspace. `forward` validates a flattened batch once, under the GIL,
then runs embedding -> every layer -> final norm -> logits for the requested rows in a single
`nogil` block through the CPU kernels' C entry points: no numpy allocation and no return to
Python per layer or per kernel, and the asyncio loop keeps running meanwhile.

The checks are what keep the unchecked kernels in bounds: every token id, position, slot, block
id, query range and logits row is validated against the model and cache before the GIL is let go.
"""
import numpy as np

from libc.math cimport tanhf
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from cyserve.kernels.cpu._checks cimport check_rc
from cyserve.kernels.cpu.activation cimport add_nogil, gelu_tanh_mul_nogil, silu_mul_nogil
from cyserve.kernels.cpu.attention cimport (
    check_paged_batch, paged_attention_nogil, reshape_and_cache_nogil,
)
from cyserve.kernels.cpu.norm cimport rms_norm_nogil
from cyserve.kernels.cpu.quant_matmul cimport get_rows_nogil, matmul_nogil
from cyserve.kernels.cpu.rope cimport rope_nogil

from cyserve.fastpath.model.architecture import Activation, RopeStyle
from cyserve.kernels.cpu.quant_matmul import row_bytes

# Kernels that can fail (return a CYS_ERR_* code), named in the error message.
cdef enum:
    K_GET_ROWS = 1
    K_MATMUL = 2
    K_ROPE = 3
    K_ATTENTION = 4
_KERNEL_NAMES = {K_GET_ROWS: "get_rows", K_MATMUL: "matmul", K_ROPE: "rope",
                 K_ATTENTION: "paged_attention"}


cdef WeightRef _weight_ref(w, int64_t rows, int64_t cols, list owners) except *:
    """Pointer view of a weights.Weight, after checking it is the [rows, cols] matrix we need."""
    if (w.rows, w.cols) != (rows, cols):
        raise ValueError(f"weight {w.name!r} is [{w.rows}x{w.cols}], the config needs [{rows}x{cols}]")
    cdef const uint8_t[:, ::1] data = w.data
    cdef int64_t rb = row_bytes(int(w.wtype), cols)
    if data.shape[0] != rows or data.shape[1] != rb:
        raise ValueError(f"weight {w.name!r} data must be uint8[{rows}, {rb}], got "
                         f"[{data.shape[0]}, {data.shape[1]}]")
    owners.append(w.data)
    cdef WeightRef ref
    ref.data = &data[0, 0]
    ref.row_bytes = rb
    ref.wtype = int(w.wtype)
    ref.rows = rows
    ref.cols = cols
    return ref


cdef const float *_vector_ref(v, int64_t n, str name, list owners) except NULL:
    cdef const float[::1] data = v
    if data.shape[0] != n:
        raise ValueError(f"{name} must be float32[{n}], got [{data.shape[0]}]")
    owners.append(v)
    return &data[0]


cdef const float *_optional_ref(v, int64_t n, str name, list owners) except? NULL:
    """_vector_ref, or NULL when the layer has no such tensor (None)."""
    if v is None:
        return NULL
    return _vector_ref(v, n, name, owners)


cdef uint16_t *_cache_ref(cache, tuple shape, str name, list owners) except NULL:
    if not isinstance(cache, np.ndarray) or cache.dtype != np.float16 or cache.shape != shape:
        raise ValueError(f"{name} must be a float16 array of shape {shape} "
                         f"[num_blocks, num_kv_heads, block_size, head_dim]")
    cdef uint16_t[:, :, :, ::1] bits = cache.view(np.uint16)
    owners.append(cache)
    return &bits[0, 0, 0, 0]


def _int32_array(name: str, arr, int ndim):
    """C-contiguous int32 view, or a ValueError naming the field (no silent narrowing)."""
    if not isinstance(arr, np.ndarray) or arr.dtype != np.int32 or arr.ndim != ndim:
        got = f"{arr.dtype}[{', '.join(map(str, arr.shape))}]" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"{name} must be an int32 array with {ndim} dimension(s), got {got}: "
                         f"build the batch with batch.build_inputs")
    return np.ascontiguousarray(arr)


cdef class CpuForward:
    """embedding -> layers -> final norm -> logits for one flattened batch, without the GIL.

    model: a weights.ModelWeights (weights stay memory-mapped; this object keeps them alive).
    k_caches, v_caches: one float16 [num_blocks, num_kv_heads, block_size, head_dim] array per
    layer, shared with the caller (the Python loop of ModelRunner reads and writes the same ones).
    max_num_tokens: workspace rows allocated now; a bigger batch grows it once.
    """

    def __cinit__(self):
        self.layers = NULL
        self.work = NULL
        self._busy = False

    def __init__(self, model, list k_caches, list v_caches, int block_size, int max_num_tokens=256):
        cfg = model.config
        self.num_layers = cfg.num_layers
        self.hidden_size = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.intermediate_size = cfg.intermediate_size
        self.vocab_size = cfg.vocab_size
        self.context_length = cfg.context_length
        self.rope_neox = model.arch.rope_style is RopeStyle.NEOX
        self.gelu = model.arch.activation is Activation.GELU_TANH
        self.embedding_scale = np.sqrt(cfg.hidden_size) if model.arch.scale_embeddings else 0.0
        self.logit_softcap = cfg.final_logit_softcap
        self.eps = cfg.rms_norm_eps
        self.scale = cfg.query_scale
        self.block_size = block_size
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if len(model.layers) != self.num_layers or len(k_caches) != self.num_layers or len(v_caches) != self.num_layers:
            raise ValueError(f"need {self.num_layers} layers, k caches and v caches; got "
                             f"{len(model.layers)}, {len(k_caches)} and {len(v_caches)}")
        if block_size < 1 or max_num_tokens < 1:
            raise ValueError(f"block_size and max_num_tokens must be >= 1, got {block_size}, {max_num_tokens}")
        self.num_blocks = k_caches[0].shape[0] if k_caches else 0
        shape = (self.num_blocks, self.num_kv_heads, block_size, self.head_dim)
        cdef int64_t H = self.hidden_size, F = self.intermediate_size
        cdef int64_t NQ = self.num_heads * self.head_dim, NKV = self.num_kv_heads * self.head_dim
        owners = [model]
        self.embd = _weight_ref(model.token_embd, self.vocab_size, H, owners)
        self.output = _weight_ref(model.output, self.vocab_size, H, owners)
        self.output_norm = _vector_ref(model.output_norm, H, "output_norm", owners)
        self.rope_freqs = _optional_ref(model.rope_freqs, self.head_dim // 2, "rope_freqs", owners)
        self.layers = <LayerRefs *>malloc(self.num_layers * sizeof(LayerRefs))
        if self.layers == NULL:
            raise MemoryError("CpuForward: no memory for the layer table")
        cdef LayerRefs *L
        for i, (lw, attn) in enumerate(zip(model.layers, model.layer_attention)):
            L = &self.layers[i]
            L.window = attn.window
            L.rope_theta = attn.rope_theta
            L.attn_norm = _vector_ref(lw.attn_norm, H, f"layer {i} attn_norm", owners)
            L.ffn_norm = _vector_ref(lw.ffn_norm, H, f"layer {i} ffn_norm", owners)
            L.wq = _weight_ref(lw.wq, NQ, H, owners)
            L.wk = _weight_ref(lw.wk, NKV, H, owners)
            L.wv = _weight_ref(lw.wv, NKV, H, owners)
            L.wo = _weight_ref(lw.wo, H, NQ, owners)
            L.w_gate = _weight_ref(lw.w_gate, F, H, owners)
            L.w_up = _weight_ref(lw.w_up, F, H, owners)
            L.w_down = _weight_ref(lw.w_down, H, F, owners)
            L.bq = _optional_ref(lw.bq, NQ, f"layer {i} bq", owners)
            L.bk = _optional_ref(lw.bk, NKV, f"layer {i} bk", owners)
            L.bv = _optional_ref(lw.bv, NKV, f"layer {i} bv", owners)
            L.q_norm = _optional_ref(lw.q_norm, self.head_dim, f"layer {i} q_norm", owners)
            L.k_norm = _optional_ref(lw.k_norm, self.head_dim, f"layer {i} k_norm", owners)
            L.post_attn_norm = _optional_ref(lw.post_attn_norm, H, f"layer {i} post_attn_norm", owners)
            L.post_ffn_norm = _optional_ref(lw.post_ffn_norm, H, f"layer {i} post_ffn_norm", owners)
            L.k_cache = _cache_ref(k_caches[i], shape, f"k_caches[{i}]", owners)
            L.v_cache = _cache_ref(v_caches[i], shape, f"v_caches[{i}]", owners)
            if L.k_cache == L.v_cache:
                raise ValueError(f"k_caches[{i}] and v_caches[{i}] must be separate arrays")
        self._owners = owners
        self.capacity = 0
        self._ensure_capacity(max_num_tokens)

    def __dealloc__(self):
        free(self.layers)

    cdef int _ensure_capacity(self, int64_t rows) except -1:
        """Workspace per row: h, x, o [hidden]; q, attn [Hq*Dh]; k, v [Hkv*Dh]; gate, up [ffn]."""
        if rows <= self.capacity:
            return 0
        cdef int64_t per_row = (3 * self.hidden_size + 2 * self.num_heads * self.head_dim
                                + 2 * self.num_kv_heads * self.head_dim + 2 * self.intermediate_size)
        arr = np.empty(rows * per_row, dtype=np.float32)
        cdef float[::1] view = arr
        self._work_array = arr
        self.work = &view[0]
        self.capacity = rows
        return 0

    def forward(self, token_ids, positions, slot_mapping, block_tables, query_start_loc,
                context_lens, logits_indices):
        """f32[R, vocab] next-token logits of rows logits_indices of the flattened batch.

        Arguments are batch.BatchInputs' fields. Writes this step's K/V into the caches.
        Raises ValueError (before touching anything) if the batch does not fit the model or cache.
        """
        token_ids = _int32_array("token_ids", token_ids, 1)
        positions = _int32_array("positions", positions, 1)
        slot_mapping = _int32_array("slot_mapping", slot_mapping, 1)
        block_tables = _int32_array("block_tables", block_tables, 2)
        query_start_loc = _int32_array("query_start_loc", query_start_loc, 1)
        context_lens = _int32_array("context_lens", context_lens, 1)
        idx = np.asarray(logits_indices)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"logits_indices must be a 1-D integer array of rows of the batch, "
                             f"got {idx.dtype}{list(idx.shape)}")
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        cdef int64_t T = token_ids.shape[0], R = idx.shape[0]
        if positions.shape[0] != T or slot_mapping.shape[0] != T:
            raise ValueError(f"positions and slot_mapping must have one entry per token (T={T}), "
                             f"got {positions.shape[0]} and {slot_mapping.shape[0]}")
        logits = np.empty((R, self.vocab_size), dtype=np.float32)
        cdef const int32_t[::1] tok = token_ids, pos = positions, slots = slot_mapping
        cdef const int32_t[::1] qsl = query_start_loc, ctx = context_lens
        cdef const int32_t[:, ::1] bt = block_tables
        cdef const int64_t[::1] rows = idx
        cdef float[:, ::1] out = logits
        self._validate(tok, pos, slots, bt, qsl, ctx, rows)
        if T == 0:
            return logits
        cdef StepArgs a
        a.T, a.S, a.R = T, ctx.shape[0], R
        a.max_blocks = bt.shape[1]
        a.token_ids, a.positions, a.slot_mapping = &tok[0], &pos[0], &slots[0]
        a.block_tables = &bt[0, 0]  # T > 0 passed the checks: some sequence owns a block
        a.query_start_loc, a.context_lens = &qsl[0], &ctx[0]
        a.logits_indices = &rows[0] if R else NULL
        a.logits = &out[0, 0] if R else NULL
        if self._busy:
            raise RuntimeError("CpuForward.forward is already running on another thread: "
                               "one engine thread must own the runner")
        self._ensure_capacity(max(T, R))
        self._busy = True
        cdef int rc
        try:
            with nogil:
                rc = self._run(&a)
        finally:
            self._busy = False
        if rc:
            where = "" if self._failed_layer < 0 else f" in layer {self._failed_layer}"
            check_rc(rc, f"{_KERNEL_NAMES.get(self._failed_kernel, 'kernel')}{where}")
        return logits

    cdef int _validate(self, const int32_t[::1] tok, const int32_t[::1] pos,
                       const int32_t[::1] slots, const int32_t[:, ::1] bt,
                       const int32_t[::1] qsl, const int32_t[::1] ctx,
                       const int64_t[::1] rows) except -1:
        """Everything the nogil loop will index is in range and self-consistent."""
        cdef int64_t T = tok.shape[0], S = ctx.shape[0], BS = self.block_size
        cdef int64_t t, s, i, q_len, start, want, p
        check_paged_batch(bt, qsl, ctx, T, self.num_blocks, BS)
        for t in range(T):
            if tok[t] < 0 or tok[t] >= self.vocab_size:
                raise ValueError(f"token_ids[{t}]={tok[t]} is not a token id in "
                                 f"[0, {self.vocab_size}) (the model's vocabulary)")
        for s in range(S):
            if ctx[s] > self.context_length:
                raise ValueError(f"context_lens[{s}]={ctx[s]} exceeds the model's context length "
                                 f"{self.context_length}: cap prompt + output tokens")
            start = qsl[s]
            q_len = qsl[s + 1] - start
            for i in range(q_len):
                t = start + i
                p = ctx[s] - q_len + i
                if pos[t] != p:
                    raise ValueError(f"positions[{t}]={pos[t]}, but sequence {s} has "
                                     f"context_lens={ctx[s]} and {q_len} new tokens, so that "
                                     f"token sits at position {p}")
                want = bt[s, p // BS] * BS + p % BS
                if slots[t] != want:
                    raise ValueError(f"slot_mapping[{t}]={slots[t]}, but block_tables[{s}] puts "
                                     f"position {p} at slot {want}")
        for i in range(rows.shape[0]):
            if rows[i] < 0 or rows[i] >= T:
                raise ValueError(f"logits_indices[{i}]={rows[i]} is not a row of the batch "
                                 f"[0, {T})")
        return 0

    cdef int _run(self, const StepArgs *a) noexcept nogil:
        cdef int64_t T = a.T, H = self.hidden_size, l, r
        cdef float *h = self.work
        cdef float *x = h + self.capacity * H
        cdef int rc
        self._failed_layer = -1
        self._failed_kernel = K_GET_ROWS
        rc = get_rows_nogil(self.embd.data, self.embd.row_bytes, self.embd.wtype, H, a.token_ids,
                            T, h)
        if rc:
            return rc
        if self.embedding_scale != 0.0:
            _scale(h, T * H, self.embedding_scale)
        for l in range(self.num_layers):
            self._failed_layer = l
            rc = self._layer(a, &self.layers[l])
            if rc:
                return rc
        self._failed_layer = -1
        if a.R == 0:
            return 0  # the step only filled the KV cache (e.g. a prefill chunk)
        # final norm and logits only for the wanted rows (R may repeat rows or exceed S)
        for r in range(a.R):
            memcpy(x + r * H, h + a.logits_indices[r] * H, H * sizeof(float))
        rms_norm_nogil(x, self.output_norm, a.R, H, self.eps, x)
        self._failed_kernel = K_MATMUL
        rc = matmul_nogil(x, a.R, H, self.output.data, self.output.row_bytes, self.output.wtype,
                          self.vocab_size, a.logits)
        if rc == 0 and self.logit_softcap != 0.0:
            _softcap(a.logits, a.R * self.vocab_size, self.logit_softcap)
        return rc

    cdef int _layer(self, const StepArgs *a, const LayerRefs *L) noexcept nogil:
        """One transformer block on h[T, hidden], in place."""
        cdef int64_t T = a.T, C = self.capacity, H = self.hidden_size
        cdef int64_t Hq = self.num_heads, Hkv = self.num_kv_heads, Dh = self.head_dim
        cdef int64_t F = self.intermediate_size
        cdef float *h = self.work                 # [T, H] residual stream
        cdef float *x = h + C * H                 # [T, H] normed input of a sublayer
        cdef float *o = x + C * H                 # [T, H] sublayer output
        cdef float *q = o + C * H                 # [T, Hq*Dh]
        cdef float *attn = q + C * Hq * Dh        # [T, Hq*Dh]
        cdef float *k = attn + C * Hq * Dh        # [T, Hkv*Dh]
        cdef float *v = k + C * Hkv * Dh          # [T, Hkv*Dh]
        cdef float *gate = v + C * Hkv * Dh       # [T, F]
        cdef float *up = gate + C * F             # [T, F]
        cdef int rc
        rms_norm_nogil(h, L.attn_norm, T, H, self.eps, x)
        self._failed_kernel = K_MATMUL
        rc = _linear(x, T, &L.wq, q)
        if rc == 0:
            rc = _linear(x, T, &L.wk, k)
        if rc == 0:
            rc = _linear(x, T, &L.wv, v)
        if rc:
            return rc
        _add_bias(q, T, L.bq, Hq * Dh)
        _add_bias(k, T, L.bk, Hkv * Dh)
        _add_bias(v, T, L.bv, Hkv * Dh)
        if L.q_norm != NULL:  # per head: T * heads rows of head_dim
            rms_norm_nogil(q, L.q_norm, T * Hq, Dh, self.eps, q)
        if L.k_norm != NULL:
            rms_norm_nogil(k, L.k_norm, T * Hkv, Dh, self.eps, k)
        self._failed_kernel = K_ROPE
        rc = rope_nogil(q, a.positions, T, Hq, Dh, L.rope_theta, self.rope_freqs, self.rope_neox)
        if rc == 0:
            rc = rope_nogil(k, a.positions, T, Hkv, Dh, L.rope_theta, self.rope_freqs, self.rope_neox)
        if rc:
            return rc
        reshape_and_cache_nogil(k, v, T, L.k_cache, L.v_cache, Hkv, self.block_size, Dh,
                                a.slot_mapping)
        self._failed_kernel = K_ATTENTION
        rc = paged_attention_nogil(q, T, Hq, L.k_cache, L.v_cache, Hkv, self.block_size, Dh,
                                   a.block_tables, a.max_blocks, a.query_start_loc,
                                   a.context_lens, a.S, self.scale, L.window, attn)
        if rc:
            return rc
        self._failed_kernel = K_MATMUL
        rc = _linear(attn, T, &L.wo, o)
        if rc:
            return rc
        _residual_add(h, o, L.post_attn_norm, T, H, self.eps)
        rms_norm_nogil(h, L.ffn_norm, T, H, self.eps, x)
        rc = _linear(x, T, &L.w_gate, gate)
        if rc == 0:
            rc = _linear(x, T, &L.w_up, up)
        if rc:
            return rc
        if self.gelu:
            gelu_tanh_mul_nogil(gate, up, T * F, gate)
        else:
            silu_mul_nogil(gate, up, T * F, gate)
        rc = _linear(gate, T, &L.w_down, o)
        if rc:
            return rc
        _residual_add(h, o, L.post_ffn_norm, T, H, self.eps)
        return 0


cdef inline int _linear(const float *x, int64_t T, const WeightRef *w, float *out) noexcept nogil:
    """out[T, w.rows] = x[T, w.cols] @ W.T"""
    return matmul_nogil(x, T, w.cols, w.data, w.row_bytes, w.wtype, w.rows, out)


cdef inline void _add_bias(float *x, int64_t T, const float *bias, int64_t n) noexcept nogil:
    """x[t, :] += bias for every row t of x[T, n]; nothing when bias is NULL."""
    cdef int64_t t
    if bias == NULL:
        return
    for t in range(T):
        add_nogil(x + t * n, bias, n)


cdef inline void _residual_add(float *h, float *o, const float *post_norm, int64_t T, int64_t H,
                               float eps) noexcept nogil:
    """h += o, after RMSNorm of o when the architecture norms sublayer outputs (post_norm != NULL)."""
    if post_norm != NULL:
        rms_norm_nogil(o, post_norm, T, H, eps, o)
    add_nogil(h, o, T * H)


cdef inline void _scale(float *x, int64_t n, float factor) noexcept nogil:
    cdef int64_t i
    for i in range(n):
        x[i] *= factor


cdef inline void _softcap(float *x, int64_t n, float cap) noexcept nogil:
    """x = cap * tanh(x / cap): final logit soft-capping (Gemma 2)."""
    cdef int64_t i
    cdef float inv = 1.0 / cap
    for i in range(n):
        x[i] = cap * tanhf(x[i] * inv)
