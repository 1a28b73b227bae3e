"""Checks a GenerateRequest and turns it into the engine's SamplingParams / StoppingParams.

Every problem becomes a FieldViolation naming the field by its proto path (`sampling.top_p`,
`messages[1].role`, `requests[2].stopping.stop[0]` in a batch); all of a request's problems are
reported together. Limits come from ServiceLimits; without them only the API's own rules apply.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cyserve.fastpath.core.request import SamplingParams, StoppingParams
from cyserve.v1 import generation_pb2 as pb

MAX_REQUEST_ID_CHARS = 128
MAX_CACHE_SALT_CHARS = 128
DEFAULT_MAX_TOKENS = StoppingParams().max_tokens
MAX_ABS_LOGIT_BIAS = 100.0
MAX_ABS_PENALTY = 2.0  # presence / frequency, as OpenAI's API
SEED_MASK = (1 << 64) - 1
MAX_VIOLATIONS_PER_FIELD = 8  # of one repeated field: a handful is enough to act on


@dataclass(frozen=True)
class FieldViolation:
    field: str  # proto path of the offending field, e.g. "sampling.top_p"
    description: str  # what is wrong, for the caller


class RequestValidationError(Exception):
    """The request breaks the API's rules; mapped to INVALID_ARGUMENT with a BadRequest detail."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


def check_generate_request(request: pb.GenerateRequest, limits=None, vocab_size: int | None = None,
                           prefix: str = "") -> None:
    """Raise RequestValidationError listing every problem of `request`, if it has any.

    `limits` is a ServiceLimits (None = only the API's rules); `vocab_size` bounds token ids;
    `prefix` is prepended to every field path (e.g. "requests[3].").
    """
    violations = generate_request_violations(request, limits, vocab_size)
    if violations:
        raise RequestValidationError([FieldViolation(prefix + v.field, v.description) for v in violations])


def generate_request_violations(request: pb.GenerateRequest, limits=None,
                                vocab_size: int | None = None) -> list[FieldViolation]:
    violations = _input_violations(request, vocab_size)
    violations += _sampling_violations(request.sampling, limits, vocab_size)
    violations += _stopping_violations(request.stopping, limits, vocab_size)
    violations += _output_violations(request.output, limits)
    # imported here: both modules build on this one's FieldViolation
    from cyserve.service.constraints import constraint_violations
    from cyserve.service.tool_calls import tool_violations

    violations += constraint_violations(request)
    violations += tool_violations(request)
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        violations.append(
            FieldViolation("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters")
        )
    if len(request.cache_salt) > MAX_CACHE_SALT_CHARS:
        violations.append(
            FieldViolation("cache_salt", f"must be at most {MAX_CACHE_SALT_CHARS} characters")
        )
    return violations


def _input_violations(request: pb.GenerateRequest, vocab_size: int | None) -> list[FieldViolation]:
    given = [name for name, present in (("prompt", bool(request.prompt)),
                                        ("messages", bool(request.messages)),
                                        ("prompt_token_ids", bool(request.prompt_token_ids))) if present]
    if len(given) > 1:
        return [FieldViolation(given[0], f"set exactly one of prompt, messages or prompt_token_ids, "
                                         f"not {' and '.join(given)}")]
    if request.messages:
        return [
            FieldViolation(f"messages[{i}].role", "must not be empty")
            for i, message in enumerate(request.messages)
            if not message.role
        ]
    if request.HasField("add_generation_prompt"):
        return [FieldViolation("add_generation_prompt", "applies only to messages")]
    if request.prompt_token_ids:
        return _token_id_violations("prompt_token_ids", request.prompt_token_ids, vocab_size)
    if not request.prompt:
        return [FieldViolation("prompt", "must not be empty (or send messages or prompt_token_ids)")]
    return []


def _token_id_violations(field: str, ids, vocab_size: int | None) -> list[FieldViolation]:
    if vocab_size is None:
        return []
    return [FieldViolation(f"{field}[{i}]", f"token id {t} is outside the vocabulary 0..{vocab_size - 1}")
            for i, t in enumerate(ids) if t >= vocab_size][:MAX_VIOLATIONS_PER_FIELD]


def _range(violations: list, msg, name: str, ok, rule: str) -> None:
    """Append a violation for optional field `name` of `msg` when set and not ok(value)."""
    if msg.HasField(name):
        value = getattr(msg, name)
        if not ok(value):
            violations.append(FieldViolation(name, f"must be {rule}, got {value}"))


def _sampling_violations(sampling: pb.SamplingParams, limits, vocab_size) -> list[FieldViolation]:
    v: list[FieldViolation] = []
    finite = math.isfinite
    _range(v, sampling, "temperature", lambda t: finite(t) and t >= 0.0, ">= 0")
    _range(v, sampling, "top_p", lambda p: 0.0 < p <= 1.0, "in (0, 1]")  # also rejects NaN
    _range(v, sampling, "top_k", lambda k: k >= 0, ">= 0 (0 = no cut)")
    _range(v, sampling, "min_p", lambda p: 0.0 <= p <= 1.0, "in [0, 1]")
    _range(v, sampling, "repetition_penalty", lambda p: finite(p) and p > 0.0, "> 0 (1 = off)")
    for name in ("presence_penalty", "frequency_penalty"):
        _range(v, sampling, name, lambda p: -MAX_ABS_PENALTY <= p <= MAX_ABS_PENALTY,
               f"in [-{MAX_ABS_PENALTY:g}, {MAX_ABS_PENALTY:g}]")
    max_n = limits.max_n if limits is not None else None
    _range(v, sampling, "n", lambda n: n >= 1 and (max_n is None or n <= max_n),
           f"in [1, {max_n}]" if max_n else ">= 1")
    max_bias = limits.max_logit_bias if limits is not None else None
    if max_bias is not None and len(sampling.logit_bias) > max_bias:
        # The count first: entries beyond the limit are not looked at one by one.
        v.append(FieldViolation("logit_bias", f"has {len(sampling.logit_bias)} entries; at most {max_bias}"))
    else:
        v += _logit_bias_violations(sampling.logit_bias, vocab_size)
    return [FieldViolation("sampling." + x.field, x.description) for x in v]


def _logit_bias_violations(logit_bias, vocab_size: int | None) -> list[FieldViolation]:
    v: list[FieldViolation] = []
    for token_id, bias in sorted(logit_bias.items()):
        if vocab_size is not None and token_id >= vocab_size:
            v.append(FieldViolation(f"logit_bias[{token_id}]",
                                    f"token id {token_id} is outside the vocabulary 0..{vocab_size - 1}"))
        elif not -MAX_ABS_LOGIT_BIAS <= bias <= MAX_ABS_LOGIT_BIAS:
            v.append(FieldViolation(f"logit_bias[{token_id}]",
                                    f"bias must be in [-{MAX_ABS_LOGIT_BIAS:g}, {MAX_ABS_LOGIT_BIAS:g}], got {bias}"))
        if len(v) == MAX_VIOLATIONS_PER_FIELD:
            break
    return v


def _stopping_violations(stopping: pb.StoppingCriteria, limits, vocab_size) -> list[FieldViolation]:
    v: list[FieldViolation] = []
    max_tokens = (limits.max_tokens or None) if limits is not None else None
    _range(v, stopping, "max_tokens", lambda m: m >= 1 and (max_tokens is None or m <= max_tokens),
           f"in [1, {max_tokens}]" if max_tokens else "at least 1")
    resolved_max = stopping.max_tokens if stopping.HasField("max_tokens") else DEFAULT_MAX_TOKENS
    if stopping.HasField("min_tokens") and stopping.min_tokens > resolved_max:
        v.append(FieldViolation("min_tokens", f"must not exceed max_tokens ({resolved_max}), "
                                              f"got {stopping.min_tokens}"))
    _range(v, stopping, "max_time_s", lambda s: math.isfinite(s) and s > 0.0, "> 0 seconds")
    if limits is not None and len(stopping.stop) > limits.max_stop_sequences:
        v.append(FieldViolation("stop", f"has {len(stopping.stop)} strings; at most {limits.max_stop_sequences}"))
    elif stopping.stop:
        v += _stop_string_violations(stopping.stop, limits)
    if limits is not None and len(stopping.stop_token_ids) > limits.max_stop_token_ids:
        v.append(FieldViolation("stop_token_ids", f"has {len(stopping.stop_token_ids)} ids; "
                                                  f"at most {limits.max_stop_token_ids}"))
    else:
        v += _token_id_violations("stop_token_ids", stopping.stop_token_ids, vocab_size)
    return [FieldViolation("stopping." + x.field, x.description) for x in v]


def _stop_string_violations(stop, limits) -> list[FieldViolation]:
    v: list[FieldViolation] = []
    for i, text in enumerate(stop):
        if not text:
            v.append(FieldViolation(f"stop[{i}]", "must not be empty"))
        elif limits is not None and len(text) > limits.max_stop_sequence_chars:
            v.append(FieldViolation(f"stop[{i}]", f"must be at most {limits.max_stop_sequence_chars} characters"))
    return v[:MAX_VIOLATIONS_PER_FIELD]


def _output_violations(output: pb.OutputOptions, limits) -> list[FieldViolation]:
    v: list[FieldViolation] = []
    max_logprobs = limits.max_logprobs if limits is not None else None
    if max_logprobs is not None:
        for name in ("logprobs", "prompt_logprobs"):
            _range(v, output, name, lambda k: k <= max_logprobs, f"at most {max_logprobs}")
    return [FieldViolation("output." + x.field, x.description) for x in v]


def sampling_params(sampling: pb.SamplingParams, output: pb.OutputOptions | None = None,
                    index: int = 0, default_seed: int | None = None,
                    defaults: pb.SamplingParams | None = None) -> SamplingParams:
    """The engine's SamplingParams: fields the caller set, then the fields `defaults` (the
    model's recommendation, ModelInfo.default_sampling) sets, the engine's defaults for the rest.

    Completion `index` of n uses seed + index (of the caller's seed, else of `default_seed`), so
    each completion differs and every one is reproducible from the echoed seed. Only completion 0
    scores the prompt (prompt_logprobs): the others would repeat it, and could not use the prefix
    cache while doing so.
    """
    given: dict = {}
    for source in (defaults, sampling):
        if source is not None:
            given |= {name: getattr(source, name)
                      for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                   "presence_penalty", "frequency_penalty")
                      if source.HasField(name)}
    seed = sampling.seed if sampling.HasField("seed") else default_seed
    if seed is not None:
        given["seed"] = (seed + index) & SEED_MASK
    if sampling.logit_bias:
        given["logit_bias"] = tuple(sorted((int(k), float(b)) for k, b in sampling.logit_bias.items()))
    if output is not None and output.HasField("logprobs"):
        given["logprobs"] = output.logprobs
    if output is not None and output.HasField("prompt_logprobs") and index == 0:
        given["prompt_logprobs"] = output.prompt_logprobs
    return SamplingParams(**given)


def stopping_params(stopping: pb.StoppingCriteria) -> StoppingParams:
    given: dict = {
        "ignore_eos": stopping.ignore_eos,
        "stop": tuple(stopping.stop),
        "stop_token_ids": tuple(stopping.stop_token_ids),
        "include_stop": stopping.include_stop,
    }
    if stopping.HasField("max_tokens"):
        given["max_tokens"] = stopping.max_tokens
    if stopping.HasField("min_tokens"):
        given["min_tokens"] = stopping.min_tokens
    return StoppingParams(**given)
