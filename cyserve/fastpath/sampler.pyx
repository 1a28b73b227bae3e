"""Token sampling: greedy, temperature, top-k, top-p, with a per-request seeded generator.

Each sequence carries its own 64-bit generator state (splitmix64), so a seed gives the same
tokens whether the request runs alone or batched with others.
"""
import numpy as np
from libc.stdint cimport uint64_t


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


cdef long _sample_row(object row, double temperature, int top_k, double top_p, uint64_t* state) except -1:
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


def sample(object logits, list seqs) -> list:
    """One token per row of `logits` [S, vocab] for the matching sequence in `seqs`."""
    cdef Py_ssize_t i
    cdef uint64_t state
    cdef const float[:, ::1] view = logits
    out = []
    for i in range(len(seqs)):
        seq = seqs[i]
        params = seq.request.sampling
        if params.temperature <= 0.0:
            out.append(int(argmax(view[i])))
            continue
        state = seq.rng_state
        out.append(_sample_row(logits[i], params.temperature, params.top_k, params.top_p, &state))
        seq.rng_state = state
    return out
