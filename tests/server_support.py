"""Test support shared by every suite that talks to a server: a Server on its own event-loop
thread (so tests use plain synchronous gRPC stubs), channel/stub fixtures, status-detail readers,
polling, and how to run the `cyserve` command as users do.

Imported as `server_support` (pytest puts tests/ on sys.path: tests/ has no __init__.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cyserve.service.server import Server
from cyserve.v1 import generation_pb2_grpc as pb_grpc


class LoopThread:
    """An asyncio event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Any) -> Any:
        """Start `coro` on the loop; returns its concurrent.futures.Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def running_server(engine: Any, **kwargs: Any) -> Iterator[tuple[Server, LoopThread]]:
    """A started Server on 127.0.0.1 (free port) around `engine` (None: no engine yet), on its own
    loop thread; kwargs go to Server (limits, credentials, auth_token, tracer_provider, ...)."""
    loop_thread = LoopThread()

    async def start() -> Server:
        server = Server(engine, "127.0.0.1", 0, **kwargs)
        await server.start()
        return server

    server = loop_thread.run(start())
    try:
        yield server, loop_thread
    finally:
        loop_thread.run(server.stop(1.0))
        loop_thread.close()


@contextlib.contextmanager
def serving(engine: Any, **kwargs: Any) -> Iterator[Server]:
    """running_server() for tests that need only the server."""
    with running_server(engine, **kwargs) as (server, _):
        yield server


def client_fixtures(server: str, channel: str, stub: str, scope: str = "module") -> tuple[Any, Any]:
    """Fixtures named `channel` (a plaintext channel to the server of fixture `server`) and `stub`
    (a Generation stub on it); assign both in a conftest."""

    @pytest.fixture(scope=scope, name=channel)
    def channel_fixture(request: pytest.FixtureRequest) -> Iterator[grpc.Channel]:
        with grpc.insecure_channel(request.getfixturevalue(server).address) as ch:
            yield ch

    @pytest.fixture(scope=scope, name=stub)
    def stub_fixture(request: pytest.FixtureRequest) -> pb_grpc.GenerationStub:
        return pb_grpc.GenerationStub(request.getfixturevalue(channel))

    return channel_fixture, stub_fixture


def details_of(exc: grpc.RpcError, kind: Any) -> list[Any]:
    """Every status detail of message type `kind` in the call's error."""
    status = rpc_status.from_call(exc)
    assert status is not None, f"no rich status in {exc!r}"
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def field_violations(exc: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) of every BadRequest field violation in the call's status details."""
    return [(v.field, v.description)
            for bad_request in details_of(exc, error_details_pb2.BadRequest)
            for v in bad_request.field_violations]


def violation_fields(exc: grpc.RpcError) -> list[str]:
    return [field for field, _ in field_violations(exc)]


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def cyserve_command() -> list[str]:
    """The installed console script; `python -m` when running from an uninstalled checkout."""
    script = shutil.which("cyserve")
    return [script] if script else [sys.executable, "-m", "cyserve.service.cli"]


CHECKOUT = Path(__file__).parents[1]


def checkout_pythonpath() -> str:
    """PYTHONPATH with this checkout first: a server subprocess runs the code under test even
    where the console script belongs to an install of another copy."""
    return os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH", "")) if p)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without CYSERVE_* settings (so a developer's own do not leak
    into the servers tests start), this checkout first on PYTHONPATH, plus `extra`; UTF-8 output
    whatever the locale. The HTTP port is off unless `extra` turns it on: servers here run side
    by side, and 8000 is one port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYSERVE_")}
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONPATH"] = checkout_pythonpath()
    env["CYSERVE_HTTP_PORT"] = "0"
    env.update(extra)
    return env
