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
