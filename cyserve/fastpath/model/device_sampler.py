"""Token sampling on the device that computed the logits (the GPU path): only token ids come back.

The same contract as `sampler.sample` (which the CPU path uses) on `[S, vocab]` torch logits:
greedy, temperature, top-k, min-p, top-p (applied in that order), repetition / presence /
frequency penalties, logit bias, the min_tokens mask, and the sampled token's logprobs under the
raw logits. Greedy rows are one argmax; the other rows are sorted once and cut by masks, so the
whole batch is a fixed handful of kernels whatever its mix of settings.

Seeds keep their promise here too: the uniform number each non-greedy token needs is drawn on the
host from the sequence's own splitmix64 state (`sampler.draw_uniform`), exactly the draw the CPU
sampler makes, so a request's stream of draws depends on nothing else in the batch.

Per step the host sends S parameters per row (and the token ids that penalties need, for the rows
that use them) and receives S token ids, plus k + 1 values per row for rows that asked for
logprobs. `dtype` is the precision of the sampling arithmetic: float32 on a GPU (as vLLM does);
float64 reproduces the CPU sampler's arithmetic, which is how the tests compare the two token for
token.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cyserve.fastpath.model.cpu_sampler import draw_uniform, masked_tokens

# Rows of logits turned into log-probabilities at a time, to bound the temporaries.
LOGPROBS_SLICE_ROWS = 256
# Device memory per logit of the rows being sampled, at most: the sorted values and their int64
# order, the probabilities, their cumulative sums and the masks, in float64 at worst.
WORKSPACE_BYTES_PER_LOGIT = 64


@dataclass
class _Edits:
    """Sparse edits of the logits, (row, token, value) triples collected per row as numpy arrays
    (a penalty covers a whole prompt: no per-token Python), sent to the device in one go."""

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    def extend(self, row: int, tokens: np.ndarray, values) -> None:
        if len(tokens):
            tokens = np.asarray(tokens, dtype=np.int64)
            self.parts.append((np.full(len(tokens), row, np.int64), tokens,
                               np.broadcast_to(np.asarray(values, np.float32), tokens.shape)))

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, tokens, values) tensors on the device."""
        rows, tokens, values = (np.concatenate(column) for column in zip(*self.parts))
        return (torch.from_numpy(rows).to(device), torch.from_numpy(tokens).to(device),
                torch.from_numpy(values).to(device))


class DeviceSampler:
    def __init__(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype

    @staticmethod
    def workspace_bytes(num_rows: int, vocab: int) -> int:
        """An upper bound on the device memory sampling num_rows rows takes, for sizing the KV cache."""
        return num_rows * vocab * WORKSPACE_BYTES_PER_LOGIT

    # ---- the sampler interface (the engine calls these) ---------------------------------------

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, seqs: list, eos_token_ids=(), logprobs_out: list | None = None,
               masks=None) -> list:
        """One token per row of `logits` [S, vocab] for the matching sequence in `seqs`;
        `logprobs_out` and `masks` (the constrained rows' token bitmasks) as in `sampler.sample`."""
        if len(seqs) == 0:
            return []
        if logits.shape[0] != len(seqs):
            raise ValueError(f"{logits.shape[0]} logits rows for {len(seqs)} sequences")
        raw = logits
        work = self._processed(logits, seqs, eos_token_ids, keep_raw=logprobs_out is not None)
        if masks is not None:
            work = _masked(work.clone() if work is raw and logprobs_out is not None else work, masks)
        tokens = torch.argmax(work, dim=-1)
        random_rows = [i for i, seq in enumerate(seqs) if not seq.request.sampling.greedy]
        if random_rows:
            tokens[random_rows] = self._sample_rows(work[random_rows], [seqs[i] for i in random_rows])
        picked = tokens.tolist()  # the step's one device-to-host copy of tokens
        if logprobs_out is not None:
            logprobs_out.extend(self._token_logprobs(raw, seqs, tokens))
        return picked

    @torch.inference_mode()
    def rows_logprobs(self, logits: torch.Tensor, token_ids, num_top: int):
        """As `sampler.rows_logprobs`: f32[R] logprobs of token_ids[r], and the top num_top ids
        (i64[R, k]) and logprobs (f32[R, k]) of each row, most likely first; numpy on the host."""
        num_rows, vocab = logits.shape
        k = min(max(num_top, 0), vocab)
        targets = (token_ids.to(torch.int64) if isinstance(token_ids, torch.Tensor)
                   else torch.as_tensor(np.asarray(token_ids, dtype=np.int64), device=logits.device))
        lp_parts, id_parts, top_parts = [], [], []
        for lo in range(0, num_rows, LOGPROBS_SLICE_ROWS):
            rows = logits[lo:lo + LOGPROBS_SLICE_ROWS].float()
            lse = torch.logsumexp(rows, dim=-1)
            lp_parts.append(rows.gather(1, targets[lo:lo + LOGPROBS_SLICE_ROWS, None])[:, 0] - lse)
            vals, ids = torch.topk(rows, k, dim=-1, sorted=True)
            id_parts.append(ids)
            top_parts.append(vals - lse[:, None])
        if not lp_parts:
            return (np.zeros(0, np.float32), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        return (torch.cat(lp_parts).cpu().numpy(), torch.cat(id_parts).cpu().numpy(),
                torch.cat(top_parts).cpu().numpy())

    # ---- logit processing ---------------------------------------------------------------------

    def _processed(self, logits: torch.Tensor, seqs: list, eos_token_ids, keep_raw: bool) -> torch.Tensor:
        """The logits after penalties, bias and masks, in sampler.processed_row's order; `logits`
        itself when no row needs any (a copy when some do and the raw rows are still wanted)."""
        rep, pen, bias, mask = _Edits(), _Edits(), _Edits(), _Edits()
        vocab = logits.shape[1]
        for i, seq in enumerate(seqs):
            params = seq.request.sampling
            if params.repetition_penalty != 1.0:
                rep.extend(i, np.unique(np.asarray(seq.token_ids, dtype=np.int64)), params.repetition_penalty)
            if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
                out_ids = seq.token_ids[seq.num_prompt_tokens:]
                if out_ids:
                    ids, counts = np.unique(np.asarray(out_ids, dtype=np.int64), return_counts=True)
                    pen.extend(i, ids, (params.frequency_penalty * counts + params.presence_penalty)
                               .astype(np.float32))
            if params.logit_bias:
                ids, values = zip(*params.logit_bias)
                bias.extend(i, np.asarray(ids), np.asarray(values))
            banned = np.asarray([t for t in masked_tokens(seq, eos_token_ids) if 0 <= t < vocab], dtype=np.int64)
            mask.extend(i, banned, float("-inf"))
        if not (rep.parts or pen.parts or bias.parts or mask.parts):
            return logits
        work = logits.clone() if keep_raw else logits
        dev = work.device
        if rep.parts:  # rows x tokens are unique (np.unique per row), so gather/scatter is exact
            r, t, p = rep.on(dev)
            vals = work[r, t]
            work[r, t] = torch.where(vals > 0, vals / p, vals * p)
        if pen.parts:
            r, t, delta = pen.on(dev)
            work[r, t] = work[r, t] - delta
        if bias.parts:  # a token may be biased twice: accumulate, as the host loop does
            r, t, value = bias.on(dev)
            work.index_put_((r, t), value, accumulate=True)
        if mask.parts:
            r, t, _ = mask.on(dev)
            work[r, t] = float("-inf")
        return work

    # ---- picking ------------------------------------------------------------------------------

    def _sample_rows(self, logits: torch.Tensor, seqs: list) -> torch.Tensor:
        """Sampled token ids i64[R] for non-greedy rows: temperature, then top-k, min-p and top-p
        as prefixes of the row sorted by probability, then the host's uniform draw."""
        params = [seq.request.sampling for seq in seqs]
        dev, dt = logits.device, self.dtype
        vocab = logits.shape[1]
        # one host-to-device copy per dtype; u: one draw per row, as on the CPU
        floats = torch.tensor([(p.temperature, p.min_p, p.top_p, draw_uniform(seq)) for p, seq in zip(params, seqs)],
                              dtype=torch.float64).to(device=dev, dtype=dt)
        temperature, min_p, top_p, u = floats.T.contiguous()[:, :, None]  # each [R, 1], contiguous for searchsorted
        top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=dev)[:, None]

        scaled, order = torch.sort(logits.to(dt) / temperature, dim=-1, descending=True, stable=True)
        position = torch.arange(vocab, device=dev)[None, :]
        keep = top_k  # [R, 1]: how many of the sorted candidates survive so far
        probs = _normalised(torch.exp(scaled - scaled[:, :1]), position < keep)
        by_min_p = (probs >= min_p * probs[:, :1]).sum(dim=-1, keepdim=True)  # probs are sorted
        keep = torch.where(min_p > 0, by_min_p, keep)
        probs = _normalised(probs, position < keep)
        # the smallest prefix whose mass reaches top_p (never more than what is left)
        by_top_p = torch.searchsorted(probs.cumsum(dim=-1), top_p) + 1
        keep = torch.where(top_p < 1, torch.minimum(by_top_p, keep), keep)
        probs = _normalised(probs, position < keep)
        pick = torch.searchsorted(probs.cumsum(dim=-1), u, right=True)
        pick = torch.minimum(pick, keep - 1)  # u within round-off of 1.0
        return order.gather(1, pick)[:, 0]

    def _token_logprobs(self, raw: torch.Tensor, seqs: list, tokens: torch.Tensor) -> list:
        """Per row: None, or (logprob of its token, [(id, logprob) of its top k]) under the raw logits."""
        wanted = [i for i, seq in enumerate(seqs) if seq.request.sampling.logprobs is not None]
        out: list = [None] * len(seqs)
        if not wanted:
            return out
        num_top = max(seqs[i].request.sampling.logprobs for i in wanted)
        lp, top_ids, top_lp = self.rows_logprobs(raw[wanted], tokens[wanted], num_top)
        for j, i in enumerate(wanted):
            k = max(seqs[i].request.sampling.logprobs, 0)
            out[i] = (float(lp[j]), [(int(t), float(v)) for t, v in zip(top_ids[j, :k], top_lp[j, :k])])
        return out


def _normalised(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """probs with the entries outside `keep` zeroed, renormalised to sum to 1 per row."""
    probs = torch.where(keep, probs, torch.zeros((), dtype=probs.dtype, device=probs.device))
    return probs / probs.sum(dim=-1, keepdim=True)


def _masked(work: torch.Tensor, masks) -> torch.Tensor:
    """`work` with the tokens each constrained row's bitmask disallows at -inf (in place): the
    int32 words go to the device once per step and are unpacked there, bit t % 32 of word t // 32."""
    dev, vocab = work.device, work.shape[1]
    rows = torch.from_numpy(masks.rows.astype(np.int64)).to(dev)
    words = torch.from_numpy(np.ascontiguousarray(masks.bitmask[masks.rows])).to(dev)  # [k, W] int32
    bits = (words.unsqueeze(-1) >> torch.arange(32, device=dev, dtype=torch.int32)) & 1  # [k, W, 32]
    allowed = bits.reshape(len(masks.rows), -1)[:, :vocab].bool()
    work[rows] = work[rows].masked_fill(~allowed, float("-inf"))
    return work
