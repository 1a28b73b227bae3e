"""Telemetry of each generation request (one completion: a Generate call, or one of the n
completions of a GenerateStream or GenerateBatch item): its GenAI span attributes, its phase spans
(queue, prefill, decode, from the engine's RequestTimings), its latency and token metrics, and its
lifecycle log lines (request.first_token, request.scheduled, request.finished or
request.rejected; cyserve.service.servicer logs request.received). `Telemetry` is what a server
holds: the tracer, the metrics and the content switch; the per-call side is in
cyserve.service.observability.rpc_telemetry.

With tracing off (no tracer provider) no span is made and no span attribute is computed.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import trace

from cyserve.fastpath.core.request import EngineRequest, RequestOutput, RequestTimings
from cyserve.service.errors import status_for
from cyserve.service.observability.metrics import PROVIDER_NAME, RequestSummary, ServiceMetrics
from cyserve.service.observability.rpc_telemetry import (
    CURRENT_CALL,
    REJECTED_CODES,
    CallTelemetry,
    TelemetryInterceptor,
    status_of,
)
from cyserve.service.observability.tracing import TRACER_NAME, record_phase_spans


class Telemetry:
    """What one server records: spans (when given a tracer provider), metrics (when given
    ServiceMetrics), and prompt/output text in spans only when `capture_content` is set."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 metrics: ServiceMetrics | None = None, capture_content: bool = False,
                 model_name: str = "") -> None:
        self.tracer = tracer_provider.get_tracer(TRACER_NAME) if tracer_provider is not None else None
        self.metrics = metrics
        self.capture_content = capture_content and self.tracer is not None
        self.model_name = model_name

    def interceptor(self) -> TelemetryInterceptor:
        return TelemetryInterceptor(self)

    def start_request(self, log: Any, context: grpc.aio.ServicerContext, operation: str,
                      started: float, prompt_index: int = 0) -> RequestTelemetry:
        return RequestTelemetry(self, log, context, operation, started, prompt_index)


class RequestTelemetry:
    """Telemetry of one completion, fed by the servicer: `submitted` once its engine request is
    built, `on_output` for each engine output, `finished` at the end."""

    def __init__(self, owner: Telemetry, log: Any, context: grpc.aio.ServicerContext,
                 operation: str, started: float, prompt_index: int = 0) -> None:
        self._owner = owner
        self._call = CURRENT_CALL.get() or CallTelemetry(None, started)  # None: no interceptor
        self._call.num_completions += 1
        self._prompt_index = prompt_index
        self._metrics = owner.metrics
        self._log = log
        self._context = context
        self.operation = operation  # gen_ai.operation.name: "chat" or "text_completion"
        self.started = started  # time.monotonic() when the call arrived
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.timings: RequestTimings | None = None
        self.num_prompt_tokens = 0
        self._scheduled_logged = False
        self._engine_took_it = False
        self._num_output_tokens = 0
        self._output_texts: list[str] | None = [] if owner.capture_content else None
        span = self._call.span
        self._span = span if span is not None and span.is_recording() else None
        if self._span is not None and self._call.num_completions == 1:
            self._span.set_attributes({
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": PROVIDER_NAME,
                "gen_ai.request.model": owner.model_name,
            })

    def submitted(self, request: EngineRequest,
                  input_messages: Callable[[], list[dict[str, str]]]) -> None:
        """The engine has the request; `input_messages()` (role/content dicts) is only called
        when content capture is on."""
        self.num_prompt_tokens = len(request.prompt_token_ids)
        if self._span is None:
            return
        sampling, stopping = request.sampling, request.stopping
        attributes: dict[str, Any] = {
            "gen_ai.request.max_tokens": stopping.max_tokens,
            "gen_ai.request.temperature": sampling.temperature,
            "gen_ai.request.top_p": sampling.top_p,
            "gen_ai.request.top_k": sampling.top_k,
        }
        if sampling.seed is not None:
            attributes["gen_ai.request.seed"] = sampling.seed
        if stopping.stop:
            attributes["gen_ai.request.stop_sequences"] = list(stopping.stop)
        if self._output_texts is not None:
            attributes["gen_ai.input.messages"] = json.dumps([
                {"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]}
                for m in input_messages()
            ])
        self._span.set_attributes(attributes)

    def on_output(self, output: RequestOutput) -> None:
        if not self._engine_took_it:  # counted here, not at submit: the engine may refuse a prompt
            self._engine_took_it = True
            if self._metrics is not None:
                self._metrics.prompt_accepted(self.num_prompt_tokens)
        if output.new_token_ids:
            now = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = now
                ttft = now - self.started
                if self._metrics is not None:
                    self._metrics.first_token(ttft, self.operation)
                self._log.info("request.first_token", ttft_s=round(ttft, 4))
            elif self._metrics is not None and self.last_token_at is not None:
                self._metrics.inter_token((now - self.last_token_at) / len(output.new_token_ids))
            self.last_token_at = now
        if output.timings is not None:
            self.timings = output.timings
            self._log_scheduled()
        if self._output_texts is not None and output.text:
            self._output_texts.append(output.text)

    def _log_scheduled(self) -> None:
        t = self.timings
        if self._scheduled_logged or t is None or not t.first_scheduled:
            return
        self._scheduled_logged = True
        self._log.info("request.scheduled", queue_s=_rounded(_seconds(t.arrival, t.first_scheduled)),
                       cached_prompt_tokens=t.num_cached_prompt_tokens)

    def finished(self, summary: dict[str, Any], finish_reason: str | None,
                 num_completion_tokens: int, error: BaseException | None) -> None:
        """Log, count and trace the end. `summary` is the servicer's log summary; `finish_reason`
        the engine's (lower-case FinishReason name) or None; `error` what the handler raised."""
        code = self._status(error)
        rejected = code in REJECTED_CODES and finish_reason is None
        self._log_end(summary, code, rejected, error)
        if finish_reason is None and not rejected:
            cancelled = code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
            finish_reason = "cancelled" if cancelled else "error"
        self._add_to_call(finish_reason, num_completion_tokens)
        if self._metrics is not None:
            self._record_metrics(code, finish_reason or "", num_completion_tokens)
        if self._span is not None:
            self._record_span(finish_reason)

    def _log_end(self, summary: dict[str, Any], code: grpc.StatusCode, rejected: bool,
                 error: BaseException | None) -> None:
        if rejected:
            message = status_for(error).details if isinstance(error, Exception) else ""
            self._log.info("request.rejected", status=code.name, message=message,
                           duration_s=summary.get("duration_s"))
            return
        self._log_scheduled()
        self._log.info("request.finished", **summary, status=code.name,
                       **_timing_fields(self.timings))

    def _add_to_call(self, finish_reason: str | None, num_completion_tokens: int) -> None:
        """This completion's usage, into the call's totals (what its span reports)."""
        call = self._call
        if self.num_prompt_tokens:
            call.prompt_tokens[self._prompt_index] = self.num_prompt_tokens
        if self.timings is not None:
            call.cached_tokens[self._prompt_index] = self.timings.num_cached_prompt_tokens
        call.output_tokens += num_completion_tokens
        self._num_output_tokens = num_completion_tokens
        if finish_reason:
            call.finish_reasons.append(finish_reason)

    def _status(self, error: BaseException | None) -> grpc.StatusCode:
        if error is None:
            return grpc.StatusCode.OK
        if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
            return status_for(error).code  # what ErrorMappingInterceptor will answer
        return status_of(error, self._context)

    def _tpot(self, num_completion_tokens: int) -> float | None:
        if self.first_token_at is None or self.last_token_at is None or num_completion_tokens < 2:
            return None
        return (self.last_token_at - self.first_token_at) / (num_completion_tokens - 1)

    def _record_metrics(self, code: grpc.StatusCode, finish_reason: str, num_completion_tokens: int) -> None:
        assert self._metrics is not None
        queue_s, prefill_s, decode_s = _phases(self.timings)
        self._metrics.request_finished(RequestSummary(
            operation=self.operation, finish_reason=finish_reason,
            error_type="" if code is grpc.StatusCode.OK else code.name,
            num_prompt_tokens=self.num_prompt_tokens, num_completion_tokens=num_completion_tokens,
            e2e_s=time.monotonic() - self.started, tpot_s=self._tpot(num_completion_tokens),
            queue_s=queue_s, prefill_s=prefill_s, decode_s=decode_s,
        ))

    def _record_span(self, finish_reason: str | None) -> None:
        span, tracer = self._span, self._owner.tracer
        assert span is not None and tracer is not None
        attributes = self._call.usage_attributes()  # summed over the call's completions
        if self._output_texts is not None:
            self._call.output_messages.append({
                "role": "assistant", "finish_reason": finish_reason or "",
                "parts": [{"type": "text", "content": "".join(self._output_texts)}],
            })
            attributes["gen_ai.output.messages"] = json.dumps(self._call.output_messages)
        span.set_attributes(attributes)
        if self.timings is not None:
            record_phase_spans(tracer, span, self.timings, self.num_prompt_tokens,
                               self._num_output_tokens)


def _seconds(start: float, end: float) -> float | None:
    return end - start if start and end and end >= start else None


def _rounded(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def _phases(t: RequestTimings | None) -> tuple[float | None, float | None, float | None]:
    """(queue, prefill, decode) seconds from the engine's timestamps; None where not reached."""
    if t is None:
        return None, None, None
    return (_seconds(t.arrival, t.first_scheduled), _seconds(t.first_scheduled, t.first_token),
            _seconds(t.first_token, t.finished))


def _timing_fields(t: RequestTimings | None) -> dict[str, Any]:
    """The engine's timings as log fields."""
    if t is None:
        return {}
    queue_s, prefill_s, decode_s = _phases(t)
    return {"queue_s": _rounded(queue_s), "prefill_s": _rounded(prefill_s), "decode_s": _rounded(decode_s),
            "cached_prompt_tokens": t.num_cached_prompt_tokens,
            "prefill_chunks": t.num_prefill_chunks, "preemptions": len(t.preemptions)}
