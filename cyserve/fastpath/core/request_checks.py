"""What the engine checks of a request before it becomes a Sequence: the limits that depend on
the model and the cache (the service validates the rest, with the same field names)."""
from __future__ import annotations

from cyserve.fastpath.core.request import EngineRequest
from cyserve.fastpath.core.sequence import Sequence
from cyserve.fastpath.errors import InvalidRequestError


def check_request(req: EngineRequest, vocab_size: int, max_model_len: int) -> None:
    """InvalidRequestError naming the field when the engine cannot serve `req`."""
    n = len(req.prompt_token_ids)
    if n == 0:
        raise InvalidRequestError("prompt", "is empty: give at least one token of prompt")
    bad = next((t for t in req.prompt_token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError("prompt_token_ids", f"token id {bad} is outside the vocabulary 0..{vocab_size - 1}")
    bad = next((t for t, _ in req.sampling.logit_bias if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError("sampling.logit_bias", f"token id {bad} is outside the vocabulary 0..{vocab_size - 1}")
    if n >= max_model_len:
        raise InvalidRequestError(
            "prompt", f"is {n} tokens; this server's limit is {max_model_len} tokens "
            "including at least one generated token: shorten the prompt")
    if req.stopping.max_tokens < 1:
        raise InvalidRequestError("stopping.max_tokens", "must be at least 1")
    if req.sampling.prompt_logprobs is not None and req.sampling.prompt_logprobs < 0:
        raise InvalidRequestError("sampling.prompt_logprobs", "must be >= 0 (or None for none)")
    if req.constraint is not None and req.stopping.ignore_eos:
        raise InvalidRequestError("stopping.ignore_eos", "cannot be combined with a constraint: the constraint "
                                  "decides where the output may end")
    if req.constraint is not None and req.stopping.min_tokens:
        raise InvalidRequestError("stopping.min_tokens", "cannot be combined with a constraint: the constraint "
                                  "decides where the output may end")
    if not -(2**31) <= req.priority < 2**31:
        raise InvalidRequestError("priority", "must fit in a signed 32-bit integer")


def new_sequence(req: EngineRequest, arrival_index: int, vocab_size: int, max_model_len: int,
                 rng_state: int) -> Sequence:
    """The checked request as a waiting Sequence, its output capped by max_model_len;
    `rng_state` is the sampler's generator state for the request's seed."""
    check_request(req, vocab_size, max_model_len)
    n = len(req.prompt_token_ids)
    return Sequence(
        request=req, arrival_index=arrival_index, token_ids=list(req.prompt_token_ids),
        num_prompt_tokens=n, max_len=min(n + req.stopping.max_tokens, max_model_len),
        rng_state=rng_state,
    )
