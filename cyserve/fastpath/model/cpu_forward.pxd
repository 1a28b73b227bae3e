# The CPU forward pass as one native call: weight pointers, KV cache pointers and f32 workspace.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t


cdef struct WeightRef:
    const uint8_t *data      # raw GGML rows, row_bytes apart
    int64_t row_bytes
    int wtype
    int64_t rows             # N: outputs
    int64_t cols             # K: inputs


cdef struct LayerRefs:
    const float *attn_norm   # f32[hidden]
    const float *ffn_norm    # f32[hidden]
    WeightRef wq, wk, wv, wo, w_gate, w_up, w_down
    # NULL unless the architecture has the feature (architecture.py)
    const float *bq          # f32[Hq*Dh] (qkv_bias)
    const float *bk          # f32[Hkv*Dh]
    const float *bv
    const float *q_norm      # f32[Dh] (qk_norm)
    const float *k_norm
    const float *post_attn_norm  # f32[hidden] (post_sublayer_norms)
    const float *post_ffn_norm
    uint16_t *k_cache        # fp16 bits [num_blocks, Hkv, BS, Dh]
    uint16_t *v_cache
    int64_t window           # sliding window of a local layer; 0 = global (LayerAttention)
    double rope_theta        # this layer's rotary base


# One validated batch, as raw pointers the nogil loop reads.
cdef struct StepArgs:
    int64_t T                # tokens (rows of the flattened batch)
    int64_t S                # sequences
    int64_t R                # rows whose logits are wanted
    int64_t max_blocks       # columns of block_tables
    const int32_t *token_ids
    const int32_t *positions
    const int32_t *slot_mapping
    const int32_t *block_tables
    const int32_t *query_start_loc
    const int32_t *context_lens
    const int64_t *logits_indices
    float *logits            # f32[R, vocab]


cdef class CpuForward:
    cdef readonly int64_t num_layers, hidden_size, num_heads, num_kv_heads, head_dim
    cdef readonly int64_t intermediate_size, vocab_size, context_length
    cdef readonly int64_t num_blocks, block_size
    cdef readonly int64_t capacity       # tokens the workspace holds now (grows on demand)
    cdef bint rope_neox                  # RopeStyle.NEOX: rotate (i, i + Dh/2), else (2i, 2i+1)
    cdef bint gelu                       # Activation.GELU_TANH, else SILU
    cdef float logit_softcap             # 0: logits as computed
    cdef float embedding_scale           # 0: embeddings as stored (scale_embeddings off)
    cdef float eps, scale
    cdef LayerRefs *layers
    cdef WeightRef embd, output
    cdef const float *output_norm
    cdef const float *rope_freqs         # f32[Dh/2] dividing the rotary frequencies, or NULL
    cdef float *work                     # f32 workspace of `capacity` rows (see _workspace_floats)
    cdef object _owners                  # Python objects that own every pointer above
    cdef object _work_array
    cdef bint _busy                      # a forward is running (GIL released): refuse re-entry
    cdef int _failed_kernel              # which kernel failed inside nogil, for the message
    cdef int64_t _failed_layer

    cdef int _ensure_capacity(self, int64_t rows) except -1
    cdef int _validate(self, const int32_t[::1] tok, const int32_t[::1] pos,
                       const int32_t[::1] slots, const int32_t[:, ::1] bt,
                       const int32_t[::1] qsl, const int32_t[::1] ctx,
                       const int64_t[::1] rows) except -1
    cdef int _run(self, const StepArgs *a) noexcept nogil
    cdef int _layer(self, const StepArgs *a, const LayerRefs *L) noexcept nogil
