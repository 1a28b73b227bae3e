"""Applying a constrained row's token bitmask to its logits: the sampler's one structured-output
step, a C loop over the row without the GIL and without a Python object per token.

The bitmask is the grammar matcher's packed form: int32 words, bit t % 32 of word t // 32 set when
token t is allowed. Disallowed tokens' logits become -inf, so greedy picking, sampling and every
cut (top-k, top-p, min-p) see only allowed tokens. `masks.reference_apply_token_bitmask` is the
numpy twin.
"""
from libc.math cimport INFINITY
from libc.stdint cimport int32_t, uint32_t


cdef void _apply_row(float* row, const int32_t* words, Py_ssize_t vocab) noexcept nogil:
    cdef Py_ssize_t w, t, base, end
    cdef uint32_t word
    for w in range((vocab + 31) // 32):
        word = <uint32_t> words[w]
        if word == 0xFFFFFFFFu:
            continue  # all 32 allowed: the common case inside free text, skipped whole
        base = w * 32
        end = base + 32 if base + 32 < vocab else vocab
        for t in range(base, end):
            if not (word >> (t - base)) & 1u:
                row[t] = -INFINITY


def apply_token_bitmask(float[::1] row not None, const int32_t[::1] bitmask not None) -> None:
    """Set row[t] = -inf for every token t the bitmask disallows (in place)."""
    cdef Py_ssize_t vocab = row.shape[0]
    if bitmask.shape[0] * 32 < vocab:
        raise ValueError(f"a bitmask of {bitmask.shape[0]} words covers {bitmask.shape[0] * 32} tokens, "
                         f"not the row's {vocab}")
    with nogil:
        _apply_row(&row[0], &bitmask[0], vocab)


def apply_token_bitmask_rows(float[:, ::1] logits not None, const int32_t[:, ::1] bitmask not None,
                             const Py_ssize_t[::1] rows not None) -> None:
    """apply_token_bitmask to logits[r] with bitmask[r] for each r in `rows` (in place)."""
    cdef Py_ssize_t i, r, vocab = logits.shape[1], n = rows.shape[0]
    if bitmask.shape[1] * 32 < vocab or bitmask.shape[0] < logits.shape[0]:
        raise ValueError(f"bitmask {bitmask.shape[0]}x{bitmask.shape[1]} does not cover logits "
                         f"{logits.shape[0]}x{vocab}")
    for i in range(n):
        if not 0 <= rows[i] < logits.shape[0]:
            raise IndexError(f"row {rows[i]} outside 0..{logits.shape[0] - 1}")
    with nogil:
        for i in range(n):
            r = rows[i]
            _apply_row(&logits[r, 0], &bitmask[r, 0], vocab)
