"""Token sampling: greedy, temperature, top-k, top-p, min-p, with a per-request seeded generator;
logit processing (repetition/presence/frequency penalties, logit bias, EOS/stop-token masking until
min_tokens) and log probabilities of the sampled tokens.

Each sequence carries its own 64-bit generator state (splitmix64), so a seed gives the same
tokens whether the request runs alone or batched with others. Every sampled token draws exactly
one uniform number, whatever the settings, so the stream of draws never depends on the batch.
A request that uses none of the processing features takes the raw logits row untouched, so greedy
and seeded outputs are bit-for-bit what they were before those features existed.
"""
import numpy as np
from libc.stdint cimport uint64_t

from cyserve.fastpath.structured.token_mask import apply_token_bitmask


cdef inline uint64_t splitmix64(uint64_t* state) noexcept nogil:
    state[0] += <uint64_t>0x9E3779B97F4A7C15
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline double uniform01(uint64_t* state) noexcept nogil:
    # top 53 bits -> [0, 1)
    return (splitmix64(state) >> 11) * (1.0 / 9007199254740992.0)


cdef Py_ssize_t argmax(const float[::1] row) noexcept nogil:
    cdef Py_ssize_t i, best = 0
    cdef float v = row[0]
    for i in range(1, row.shape[0]):
        if row[i] > v:
            v = row[i]
            best = i
    return best


def seed_state(seed) -> int:
    """The generator state for a request: from its seed, else from the OS's entropy."""
    if seed is None:
        import os
        return int.from_bytes(os.urandom(8), "little")
    return int(seed) & 0xFFFFFFFFFFFFFFFF


cdef long _sample_row(object row, double temperature, int top_k, double top_p, double min_p,
                      uint64_t* state) except -1:
    cdef Py_ssize_t vocab = row.shape[0]
    cdef double u
    cdef Py_ssize_t pick
    if 0 < top_k < vocab:
        cand = np.argpartition(row, vocab - top_k)[vocab - top_k:]
    else:
        cand = np.arange(vocab)
    scaled = row[cand].astype(np.float64) / temperature
    order = np.argsort(-scaled, kind="stable")
    cand = cand[order]
    scaled = scaled[order]
    probs = np.exp(scaled - scaled[0])
    probs /= probs.sum()
    if min_p > 0.0:  # probs are sorted: keep the prefix at or above min_p * the top probability
        keep = int(np.count_nonzero(probs >= min_p * probs[0]))
        cand = cand[:keep]
        probs = probs[:keep] / probs[:keep].sum()
    if top_p < 1.0:
        cum = np.cumsum(probs)
        keep = int(np.searchsorted(cum, top_p)) + 1  # smallest prefix whose mass reaches top_p
        cand = cand[:keep]
        probs = probs[:keep] / probs[:keep].sum()
    u = uniform01(state)
    pick = int(np.searchsorted(np.cumsum(probs), u, side="right"))
    if pick >= cand.shape[0]:
        pick = cand.shape[0] - 1  # u within round-off of 1.0
    return int(cand[pick])


def draw_uniform(seq) -> float:
    """The next number in [0, 1) of the sequence's generator, advancing its state: the one draw
    `sample` makes per non-greedy token, for a sampler that picks the token elsewhere (the GPU's)
    from the same stream, so a seed means the same draws on every device."""
    cdef uint64_t state = seq.rng_state
    cdef double u = uniform01(&state)
    seq.rng_state = state
    return u


def masked_tokens(seq, eos_token_ids=()) -> tuple:
    """Token ids this sequence may not sample yet: its stop tokens and (unless ignore_eos) EOS,
    until it has min_tokens outputs."""
    stopping = seq.request.stopping
    if seq.num_output_tokens >= stopping.min_tokens:
        return ()
    return tuple(stopping.stop_token_ids) + (() if stopping.ignore_eos else tuple(eos_token_ids))


def processed_row(object row, seq, eos_token_ids=()):
    """The logits row after penalties, bias and min_tokens masking; `row` itself when nothing
    applies (so the common path copies nothing)."""
    params = seq.request.sampling
    mask = masked_tokens(seq, eos_token_ids)
    if not params.needs_processing and not mask:
        return row
    row = np.array(row, dtype=np.float32)  # [vocab], a private copy
    if params.repetition_penalty != 1.0:
        seen = np.unique(np.asarray(seq.token_ids, dtype=np.int64))
        vals = row[seen]
        row[seen] = np.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
    if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
        out_ids = seq.token_ids[seq.num_prompt_tokens:]
        if out_ids:
            ids, counts = np.unique(np.asarray(out_ids, dtype=np.int64), return_counts=True)
            row[ids] -= (params.frequency_penalty * counts + params.presence_penalty).astype(np.float32)
    for token_id, bias in params.logit_bias:
        row[token_id] += bias
    for token_id in mask:
        if 0 <= token_id < row.shape[0]:
            row[token_id] = -np.inf
    return row


def token_logprobs(object row, long token, int num_top):
    """(logprob of `token`, [(id, logprob) of the num_top most likely]) under log-softmax(row)."""
    lp, top_ids, top_lp = rows_logprobs(np.asarray(row)[None, :], [token], num_top)
    return float(lp[0]), [(int(j), float(v)) for j, v in zip(top_ids[0], top_lp[0])]


# Rows of logits turned into log-probabilities at a time: the temporaries stay a few MB however
# many rows a prefill chunk has.
cdef int LOGPROBS_SLICE_ROWS = 32


def rows_logprobs(object logits, object token_ids, int num_top):
    """Log-probabilities under log-softmax of each row of `logits` f32[R, vocab]: of token_ids[r]
    (-> f32[R]) and of the row's num_top most likely tokens, most likely first (-> i64[R, num_top]
    ids, f32[R, num_top] logprobs). Vectorised over the rows, in slices."""
    x = np.asarray(logits, dtype=np.float32)
    targets = np.asarray(token_ids, dtype=np.int64)
    cdef Py_ssize_t num_rows = x.shape[0], vocab = x.shape[1], lo, hi
    k = min(max(num_top, 0), vocab)
    target_lp = np.empty(num_rows, dtype=np.float32)
    top_ids = np.empty((num_rows, k), dtype=np.int64)
    top_lp = np.empty((num_rows, k), dtype=np.float32)
    for lo in range(0, num_rows, LOGPROBS_SLICE_ROWS):
        hi = min(lo + LOGPROBS_SLICE_ROWS, num_rows)
        rows = x[lo:hi]
        m = rows.max(axis=1, keepdims=True)  # [r, 1]
        lse = (m[:, 0].astype(np.float64)
               + np.log(np.exp(rows - m).sum(axis=1, dtype=np.float64)))  # [r]
        picked = np.take_along_axis(rows, targets[lo:hi, None], axis=1)[:, 0]
        target_lp[lo:hi] = picked - lse
        if k:
            idx = np.argpartition(-rows, k - 1, axis=1)[:, :k]  # [r, k], unordered
            vals = np.take_along_axis(rows, idx, axis=1)
            order = np.argsort(-vals, axis=1, kind="stable")
            top_ids[lo:hi] = np.take_along_axis(idx, order, axis=1)
            top_lp[lo:hi] = np.take_along_axis(vals, order, axis=1) - lse[:, None]
    return target_lp, top_ids, top_lp


def sample(object logits, list seqs, eos_token_ids=(), list logprobs_out=None, masks=None) -> list:
    """One token per row of `logits` [S, vocab] for the matching sequence in `seqs`.

    `masks` (structured.masks.TokenMasks, or None) holds the token bitmask of each constrained row:
    tokens it disallows get -inf (in a copy of the row) after the other processing.

    `eos_token_ids` are masked (with each request's stop_token_ids) until its min_tokens. When
    `logprobs_out` is a list, it receives one entry per row: None, or (logprob, top) for requests
    that asked for logprobs (of the raw logits: the model's own distribution).
    """
    cdef Py_ssize_t i
    cdef uint64_t state
    cdef const float[:, ::1] view = logits
    out = []
    for i in range(len(seqs)):
        seq = seqs[i]
        params = seq.request.sampling
        raw = logits[i]
        row = processed_row(raw, seq, eos_token_ids)
        if masks is not None and masks.has_row(i):
            if row is raw:
                row = np.array(raw, dtype=np.float32)
            apply_token_bitmask(row, masks.bitmask[i])
        if params.temperature <= 0.0:
            token = int(argmax(view[i])) if row is raw else int(np.argmax(row))
        else:
            state = seq.rng_state
            token = _sample_row(row, params.temperature, params.top_k, params.top_p, params.min_p, &state)
            seq.rng_state = state
        out.append(token)
        if logprobs_out is not None:
            num_top = getattr(params, "logprobs", None)
            logprobs_out.append(None if num_top is None else token_logprobs(raw, token, num_top))
    return out


class CpuSampler:
    """The CPU runner's sampler: this module's functions on numpy logits, behind the interface the
    device sampler has too (runner.Sampler)."""

    @staticmethod
    def workspace_bytes(num_rows: int, vocab: int) -> int:
        return 0  # host memory, allocated per step

    def sample(self, logits, list seqs, eos_token_ids=(), list logprobs_out=None, masks=None) -> list:
        return sample(logits, seqs, eos_token_ids, logprobs_out, masks)

    def rows_logprobs(self, logits, token_ids, int num_top):
        return rows_logprobs(logits, token_ids, num_top)
