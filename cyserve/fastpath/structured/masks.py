"""Each step's token masks for the constrained rows of a batch, built before the sampler runs.

`token_masks(seqs, vocab)` brings each constrained sequence's matcher up to its output and fills
its row of one int32 bitmask [S, ceil(vocab / 32)]; None when no sequence in the batch has a
constraint, so unconstrained batches pay nothing. The samplers apply the rows listed in
`TokenMasks.rows` (token_mask.pyx on the host, a bit unpack on the device).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TokenMasks:
    bitmask: np.ndarray  # int32 [S, words]; rows not in `rows` are left all ones
    rows: np.ndarray  # intp [k]: the constrained rows, ascending

    def has_row(self, row: int) -> bool:
        return bool(np.any(self.rows == row))


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def token_masks(seqs: list, vocab_size: int) -> TokenMasks | None:
    """The masks of `seqs` (the sequences that sample this step, in row order)."""
    rows = [i for i, seq in enumerate(seqs) if seq.matcher is not None]
    if not rows:
        return None
    bitmask = np.full((len(seqs), bitmask_words(vocab_size)), -1, dtype=np.int32)
    for i in rows:
        seq = seqs[i]
        seq.matcher.sync(seq.token_ids[seq.num_prompt_tokens:])
        seq.matcher.fill(bitmask, i)
    return TokenMasks(bitmask, np.asarray(rows, dtype=np.intp))


def allowed_tokens(bitmask_row: np.ndarray, vocab_size: int) -> np.ndarray:
    """The token ids a bitmask row allows, ascending."""
    bits = np.unpackbits(np.ascontiguousarray(bitmask_row, dtype="<i4").view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:vocab_size])


def reference_apply_token_bitmask(row: np.ndarray, bitmask_row: np.ndarray) -> np.ndarray:
    """token_mask.apply_token_bitmask in numpy: a copy of `row` with disallowed tokens at -inf."""
    out = np.array(row, dtype=np.float32)
    keep = np.zeros(out.shape[0], dtype=bool)
    keep[allowed_tokens(bitmask_row, out.shape[0])] = True
    out[~keep] = -np.inf
    return out
