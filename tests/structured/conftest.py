"""Fixtures of the structured-output tests: the default model's tokenizer and a grammar cache on it."""
from __future__ import annotations

from typing import Any

import pytest

from cyserve.fastpath.structured.grammars import GrammarCache


@pytest.fixture(scope="session")
def tokenizer(gguf_model: Any) -> Any:
    from cyserve.fastpath.loading import load_tokenizer

    return load_tokenizer(gguf_model)


@pytest.fixture(scope="session")
def vocab_size(gguf_model: Any) -> int:
    return gguf_model.config.vocab_size


@pytest.fixture(scope="session")
def eos_ids(tokenizer: Any) -> frozenset[int]:
    return frozenset({tokenizer.eos_token_id, tokenizer.token_to_id("<|endoftext|>")} - {None})


@pytest.fixture(scope="session")
def grammars(tokenizer: Any, vocab_size: int, eos_ids: frozenset[int]) -> GrammarCache:
    cache = GrammarCache(tokenizer, vocab_size, eos_ids)
    yield cache
    cache.close()


@pytest.fixture(scope="module")
def api(engine: Any) -> Any:
    from server_support import serving

    with serving(engine) as server:
        yield server


@pytest.fixture(scope="module")
def stub(api: Any) -> Any:
    import grpc

    from cyserve.v1 import generation_pb2_grpc as pb_grpc

    with grpc.insecure_channel(api.address) as channel:
        yield pb_grpc.GenerationStub(channel)


@pytest.fixture(scope="module")
def openai_client(engine: Any) -> Any:
    """The official client on the OpenAI-compatible HTTP API of a server on the real engine."""
    import openai
    from server_support import serving

    with serving(engine, http_port=0) as server:
        with openai.OpenAI(base_url=server.http_address + "/v1", api_key="unused", max_retries=0,
                           timeout=120) as client:
            yield client
