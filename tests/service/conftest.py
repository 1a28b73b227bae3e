"""Fixtures for the service tests: servers on 127.0.0.1 with a free port, around the fake engine
(fast, no model) or the real engine serving the default model (the session's `engine` fixture
from tests/conftest.py)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from server_support import client_fixtures, serving

from .support import FakeEngine


@pytest.fixture(scope="module")
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="module")
def fake_server(fake_engine: FakeEngine) -> Iterator[Any]:
    with serving(fake_engine) as server:
        yield server


@pytest.fixture(scope="session")
def live_server(engine: Any) -> Iterator[Any]:
    with serving(engine) as server:
        yield server


fake_channel, fake_stub = client_fixtures("fake_server", "fake_channel", "fake_stub")
live_channel, stub = client_fixtures("live_server", "live_channel", "stub", scope="session")
