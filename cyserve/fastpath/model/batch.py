"""A step's batch as the kernels see it: every scheduled sequence's new tokens flattened into one
`[T]` row of token ids, with their positions, KV slots, block tables and the rows whose logits
the step needs (`BatchInputs`, built by `build_inputs`)."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

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




def wants_prompt_rows(seq) -> bool:
    """Whether the sequence's prompt logprobs still lack rows that this step's chunk computes."""
    k = seq.request.sampling.prompt_logprobs
    last_row = seq.num_prompt_tokens - 1  # row p scores prompt token p + 1
    return k is not None and seq.num_scored_prompt_rows < last_row and seq.num_computed_tokens < last_row


def logit_rows(seq) -> LogitRows:
    """ALL while the prompt logprobs need this chunk's rows, else LAST when the chunk ends at the
    sequence's last token (its next token is sampled), else NONE."""
    if wants_prompt_rows(seq):
        return LogitRows.ALL
    return LogitRows.LAST if seq.samples_next_token else LogitRows.NONE


def scheduled_items(scheduled: list) -> list:
    """build_inputs' items for the scheduler's sequences."""
    return [(s.token_ids, s.num_computed_tokens, s.num_scheduled_tokens, s.block_ids, logit_rows(s))
            for s in scheduled]
