"""The runner interface: `execute(SchedulerOutput) -> RunnerOutput`.

A runner owns the KV storage, one forward pass and the sampler that reads its logits, so the
engine never holds logits: it hands the scheduler's batch over and gets token ids (and the
logprobs asked for) back. `RunnerBase.execute` is the one implementation of that step; a runner
supplies `forward(BatchInputs) -> logits` and a `Sampler` for logits of its kind (numpy on the CPU,
torch tensors on a GPU, which then never leave the device).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cyserve.fastpath.core.request import PromptLogprobs
from cyserve.fastpath.model.batch import BatchInputs, LogitRows, build_inputs, scheduled_items
from cyserve.fastpath.model.weights import ModelConfig
from cyserve.fastpath.structured.masks import TokenMasks, token_masks

# One sampled token's logprobs: (logprob, [(top id, top logprob), ...]).
TokenLogprobs = tuple[float, list[tuple[int, float]]]


@dataclass
class RunnerOutput:
    """One step's results, for the sequences of `SchedulerOutput.sampling` in order."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]
    # request id -> the prompt logprobs of the rows this step scored; they continue the
    # sequence's `num_scored_prompt_rows` (engine.py appends them and advances it).
    prompt_logprobs: dict[str, PromptLogprobs] = field(default_factory=dict)


class Sampler(Protocol):
    """Picks tokens from logits of one kind (numpy or torch on some device)."""

    def workspace_bytes(self, num_rows: int, vocab: int) -> int: ...

    def sample(self, logits: Any, seqs: list, eos_token_ids: Any = (),
               logprobs_out: list | None = None, masks: TokenMasks | None = None) -> list[int]: ...

    def rows_logprobs(self, logits: Any, token_ids: Any, num_top: int) -> tuple[Any, Any, Any]: ...


class ModelRunner(Protocol):
    """What the engine drives: one forward and sampling per step."""

    block_size: int
    sampler: Sampler

    def execute(self, scheduled: Any, eos_token_ids: frozenset[int]) -> RunnerOutput: ...


def kv_bytes_per_block(config: ModelConfig, block_size: int) -> int:
    """fp16 K and V of every layer for one block: the same layout on every device."""
    return 2 * config.num_layers * config.num_kv_heads * block_size * config.head_dim * 2


class RunnerBase:
    """`execute` for a runner that has `forward(BatchInputs) -> logits[R, vocab]` and a sampler."""

    block_size: int
    sampler: Sampler

    def forward(self, inputs: BatchInputs) -> Any:
        raise NotImplementedError

    def execute(self, scheduled: Any, eos_token_ids: frozenset[int]) -> RunnerOutput:
        """Run `scheduled` (a SchedulerOutput with at least one sequence): forward, prompt
        logprobs, then one token for each sequence of `scheduled.sampling`."""
        items = scheduled_items(scheduled.scheduled)
        inputs = build_inputs(items, self.block_size)
        logits = self.forward(inputs)
        prompt: dict[str, PromptLogprobs] = {}
        if any(item[4] == LogitRows.ALL for item in items):
            logits = self._score_prompts(scheduled.scheduled, items, inputs.logits_start_loc, logits, prompt)
        logprobs: list[TokenLogprobs | None] = []
        masks = token_masks(scheduled.sampling, logits.shape[1])  # None: no constrained row
        tokens = self.sampler.sample(logits, scheduled.sampling, eos_token_ids, logprobs, masks)
        return RunnerOutput(tokens, logprobs, prompt)

    def _score_prompts(self, seqs: list, items: list, logits_start_loc: Any, logits: Any,
                       prompt: dict[str, PromptLogprobs]) -> Any:
        """Fill `prompt` with each ALL sequence's newly scored rows; return the logits of the
        sampling rows only (one per sequence that samples, in order). Row position p scores prompt
        token p + 1; rows scored before (a chunk recomputed after preemption) are skipped."""
        sampling_rows = []
        for i, seq in enumerate(seqs):
            lo, hi = int(logits_start_loc[i]), int(logits_start_loc[i + 1])
            if hi > lo and seq.samples_next_token:
                sampling_rows.append(hi - 1)
            if items[i][4] != LogitRows.ALL:
                continue
            start = seq.num_computed_tokens
            first = seq.num_scored_prompt_rows
            last = min(start + seq.num_scheduled_tokens, seq.num_prompt_tokens - 1)  # rows [first, last)
            if first < start:
                raise RuntimeError(f"prompt logprobs of {seq.request_id!r} miss rows {first}..{start - 1}")
            if last <= first:
                continue
            targets = seq.token_ids[first + 1:last + 1]
            lp, top_ids, top_lp = self.sampler.rows_logprobs(logits[lo + first - start:lo + last - start], targets,
                                                             seq.request.sampling.prompt_logprobs)
            prompt[seq.request_id] = PromptLogprobs(list(targets), lp.tolist(), top_ids.tolist(), top_lp.tolist())
        return logits[sampling_rows]
