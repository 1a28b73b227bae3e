"""Fixtures for the telemetry tests: one server around TimedFakeEngine with tracing into an
in-memory exporter and metrics on a free port."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from server_support import client_fixtures, serving

from .support import TimedFakeEngine


@pytest.fixture(scope="module")
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))  # exported as each span ends
    yield provider
    provider.shutdown()


@pytest.fixture(scope="module")
def timed_engine() -> TimedFakeEngine:
    return TimedFakeEngine()


@pytest.fixture(scope="module")
def traced_server(timed_engine: TimedFakeEngine, tracer_provider: TracerProvider) -> Iterator[Any]:
    with serving(timed_engine, tracer_provider=tracer_provider, metrics_port=0) as server:
        yield server


traced_channel, traced_stub = client_fixtures("traced_server", "traced_channel", "traced_stub")


@pytest.fixture()
def spans(span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    """The exporter, emptied before the test."""
    span_exporter.clear()
    return span_exporter
