"""A live server around the session's real engine, with small limits so they can be hit."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from server_support import client_fixtures, serving

from cyserve.service.limits import ServiceLimits

LIMITS = ServiceLimits(max_prompt_tokens=200, max_message_bytes=64 << 10, max_stop_sequences=4)


@pytest.fixture(scope="module")
def api(engine: Any) -> Iterator[Any]:
    with serving(engine, limits=LIMITS) as server:
        yield server


channel, api_stub = client_fixtures("api", "channel", "api_stub")


@pytest.fixture(scope="module")
def http_api(engine: Any) -> Iterator[Any]:
    """A server with the OpenAI-compatible HTTP API on a free port (and metrics, to check them)."""
    with serving(engine, limits=LIMITS, http_port=0, metrics_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def openai_client(http_api: Any) -> Any:
    """The official client on that API; no retries, so each error status is seen as sent."""
    import openai

    with openai.OpenAI(base_url=http_api.http_address + "/v1", api_key="unused", max_retries=0,
                       timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def model_name(openai_client: Any) -> str:
    return openai_client.models.list().data[0].id
