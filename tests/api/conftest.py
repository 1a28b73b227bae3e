"""A live server around the session's real engine, with small limits so they can be hit."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cyserve.service.limits import ServiceLimits
from cyserve.v1 import generation_pb2_grpc as pb_grpc

from .support import api_server

LIMITS = ServiceLimits(max_prompt_tokens=200, max_message_bytes=64 << 10, max_stop_sequences=4)


@pytest.fixture(scope="module")
def api(engine: Any) -> Iterator[Any]:
    with api_server(engine, limits=LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def channel(api: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(api.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def api_stub(channel: grpc.Channel) -> pb_grpc.GenerationStub:
    return pb_grpc.GenerationStub(channel)
