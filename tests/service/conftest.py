"""Fixtures for the service tests: servers on 127.0.0.1 with a free port, around the fake engine
(fast, no model) or the real engine serving the default model (the session's `engine` fixture
from tests/conftest.py)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cyserve.v1 import generation_pb2_grpc as pb_grpc

from .support import FakeEngine, running_server


@pytest.fixture(scope="module")
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="module")
def fake_server(fake_engine: FakeEngine) -> Iterator[Any]:
    with running_server(fake_engine) as (server, _):
        yield server


@pytest.fixture(scope="module")
def fake_channel(fake_server: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fake_server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def fake_stub(fake_channel: grpc.Channel) -> pb_grpc.GenerationStub:
    return pb_grpc.GenerationStub(fake_channel)


@pytest.fixture(scope="session")
def live_server(engine: Any) -> Iterator[Any]:
    with running_server(engine) as (server, _):
        yield server


@pytest.fixture(scope="session")
def live_channel(live_server: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live_server.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(live_channel: grpc.Channel) -> pb_grpc.GenerationStub:
    return pb_grpc.GenerationStub(live_channel)
