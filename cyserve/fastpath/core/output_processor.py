"""Turns sampled tokens into RequestOutputs: UTF-8-safe text deltas and every stop condition.

Stop strings are matched on text, across token boundaries. Text that might be the start of a stop
string is held back until it is known not to be, so a stream never sends text it later withdraws.
Stop strings and stop token ids count only from min_tokens on (the sampler masks EOS and stop
tokens before that); include_stop keeps the matched string, or the stop token's text, in the output.
"""
from __future__ import annotations

from cyserve.fastpath.core.request import FinishReason, RequestOutput
from cyserve.fastpath.core.sequence import Sequence
from cyserve.fastpath.tokenizer import IncrementalDecoder


def _held_suffix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-k:]):
                best = k
                break
    return best


class SequenceOutputState:
    """Per-sequence text state: the incremental decoder and any text held back."""

    def __init__(self, seq: Sequence, tokenizer, eos_token_ids: frozenset[int]) -> None:
        self.seq = seq
        self.tokenizer = tokenizer
        self.decoder = IncrementalDecoder(tokenizer)
        self.eos_token_ids = eos_token_ids
        self.held = ""

    def _text_of(self, token_id: int) -> str:
        if self.tokenizer.is_special(token_id):
            return ""  # control tokens are reported as ids, not spliced into the text
        return self.decoder.push(token_id)

    def _stop_token_text(self, token_id: int) -> str:
        """The text a stop token shows with include_stop: its piece when special, else decoded."""
        if self.tokenizer.is_special(token_id):
            return self.decoder.flush() + self.tokenizer.id_to_piece(token_id)
        return self.decoder.push(token_id)

    def on_token(self, token_id: int) -> RequestOutput:
        """Account for one sampled token (already appended to seq.token_ids)."""
        seq = self.seq
        stopping = seq.request.stopping
        out = RequestOutput(seq.request_id, [token_id], "", num_prompt_tokens=seq.num_prompt_tokens,
                            num_completion_tokens=seq.num_output_tokens)
        armed = seq.num_output_tokens >= stopping.min_tokens  # this token counts towards min_tokens
        if armed and token_id in stopping.stop_token_ids:
            out.stop_token_id = token_id
            if stopping.include_stop:
                self.held += self._stop_token_text(token_id)
            return self._finish(out, FinishReason.STOP_TOKEN)
        if token_id in self.eos_token_ids and not stopping.ignore_eos:
            return self._finish(out, FinishReason.EOS)
        text = self.held + self._text_of(token_id)
        stops = stopping.stop if armed else ()
        for stop in stops:
            idx = text.find(stop)
            if idx >= 0:
                out.text = text[:idx + len(stop)] if stopping.include_stop else text[:idx]
                self.held = ""
                out.stop_sequence = stop
                return self._finish(out, FinishReason.STOP_SEQUENCE, flush=False)
        hold = _held_suffix_len(text, stopping.stop)
        out.text, self.held = text[: len(text) - hold], text[len(text) - hold:]
        if seq.num_output_tokens >= stopping.max_tokens or seq.num_tokens >= seq.max_len:
            return self._finish(out, FinishReason.LENGTH)
        return out

    def _finish(self, out: RequestOutput, reason: FinishReason, flush: bool = True) -> RequestOutput:
        if flush:
            out.text += self.held + self.decoder.flush()
            self.held = ""
        out.finished = True
        out.finish_reason = reason
        self.seq.finish_reason = reason
        return out
