"""structlog setup for the server process: one JSON object per line on stderr, or human-readable
lines when stderr is a terminal. Every line logged inside a traced call carries the `trace_id` and
`span_id` of the current OpenTelemetry span (or of the caller's, when tracing is off).

Tracebacks carry file, line and function of each frame but never the frames' local variables:
those hold requests, prompts and outputs, which are not logged.

Only the CLI calls configure_logging(); as a library the service logs through whatever structlog
configuration its host set up (add_trace_context is there for hosts to reuse).
"""
from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor


def add_trace_context(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: trace_id and span_id (lower-case hex, as W3C traceparent writes them)
    of the current span, when there is a valid one."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict.setdefault("trace_id", format(span_context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(span_context.span_id, "016x"))
    return event_dict


def processors(console: bool) -> list[Processor]:
    """The processor chain, renderer last: JSON lines, or coloured console output."""
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        formatter = structlog.dev.RichTracebackFormatter(show_locals=False)
        return [*chain, structlog.dev.ConsoleRenderer(exception_formatter=formatter)]
    tracebacks = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
    return [*chain, tracebacks, structlog.processors.JSONRenderer()]


def configure_logging(level: int = logging.INFO, stream: TextIO | None = None,
                      console: bool | None = None) -> None:
    """Log to `stream` (default stderr); `console` None = human-readable when it is a terminal."""
    stream = stream or sys.stderr
    if console is None:
        console = bool(getattr(stream, "isatty", lambda: False)())
    structlog.configure(
        processors=processors(console),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
