"""A vocabulary that asks for a BOS (Gemma 3: tokenizer.ggml.add_bos_token) gets exactly one in
front of every prompt the service encodes: raw prompts, chat prompts whose template leaves the BOS
to the tokenizer (our built-in Gemma template) and templates that write `{{ bos_token }}`
themselves. Ids the caller sends are left as they are. The fake engine carries Gemma's real
tokenizer; the vocabulary without BOS (SmolLM2) is covered by the other service tests."""
from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from server_support import serving

from cyserve.fastpath.model.chat_templates import GEMMA
from cyserve.fastpath.model.gguf_file import GGUFFile
from cyserve.fastpath.tokenizer import Tokenizer
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

from .support import FakeEngine, fake_model_info

TIMEOUT = 30.0
BOS = 2
WRITES_BOS = "{{ bos_token }}" + GEMMA


@pytest.fixture(scope="module")
def gemma_tokenizer(gemma_path) -> Tokenizer:
    return Tokenizer.from_gguf(GGUFFile(gemma_path))


def _engine(tokenizer: Tokenizer, template: str) -> FakeEngine:
    info = fake_model_info(vocab_size=tokenizer.vocab_size, bos_token_id=BOS, eos_token_id=1,
                           chat_template=template, architecture="gemma3")
    return FakeEngine(model_info=info, tokenizer=tokenizer)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=[GEMMA, WRITES_BOS], ids=["template-without-bos", "template-with-bos"])
def served(request, gemma_tokenizer) -> Iterator[tuple[FakeEngine, pb_grpc.GenerationStub]]:
    engine = _engine(gemma_tokenizer, request.param)
    with serving(engine) as server, grpc.insecure_channel(server.address) as channel:
        yield engine, pb_grpc.GenerationStub(channel)


MESSAGES = [pb.ChatMessage(role="user", content="Hello!")]


def test_chat_prompt_has_one_bos(served, gemma_tokenizer):
    engine, stub = served
    rendered = stub.RenderChat(pb.RenderChatRequest(messages=MESSAGES), timeout=TIMEOUT)
    assert rendered.token_ids[0] == BOS and BOS not in rendered.token_ids[1:]
    assert gemma_tokenizer.id_to_piece(rendered.token_ids[1]) == "<start_of_turn>"
    stub.Generate(pb.GenerateRequest(messages=MESSAGES), timeout=TIMEOUT)
    assert engine.requests[-1].prompt_token_ids == list(rendered.token_ids)


def test_raw_prompt_has_one_bos(served, gemma_tokenizer):
    engine, stub = served
    hello = gemma_tokenizer.encode("Hello")
    for prompt in ("Hello", "<bos>Hello"):
        stub.Generate(pb.GenerateRequest(prompt=prompt), timeout=TIMEOUT)
        assert engine.requests[-1].prompt_token_ids == [BOS, *hello], prompt


def test_token_id_prompt_is_left_alone(served, gemma_tokenizer):
    engine, stub = served
    hello = gemma_tokenizer.encode("Hello")
    stub.Generate(pb.GenerateRequest(prompt_token_ids=hello), timeout=TIMEOUT)
    assert engine.requests[-1].prompt_token_ids == hello
