"""Open what `--model` names: a GGUF file or a Hugging Face model directory, as the weights every
forward reads and the tokenizer that goes with them."""
from __future__ import annotations

import os

from cyserve.fastpath.errors import ModelLoadError
from cyserve.fastpath.model.gguf_loader import load_gguf
from cyserve.fastpath.model.hf_checkpoint import is_hf_directory, load_hf_checkpoint
from cyserve.fastpath.model.weights import ModelWeights
from cyserve.fastpath.tokenizer import Tokenizer
from cyserve.fastpath.tokenizer.hf_json import TokenizerJsonError, from_tokenizer_json


def load_tokenizer(model: ModelWeights) -> Tokenizer:
    """The tokenizer of a loaded model, from the same file or directory; ModelLoadError if unusable."""
    if model.reader is not None:
        try:
            return Tokenizer.from_gguf(model.reader)
        except ValueError as exc:
            raise ModelLoadError(model.path, f"tokenizer: {exc}") from exc
    path = os.path.join(model.path, "tokenizer.json")
    if not os.path.isfile(path):
        raise ModelLoadError(path, "missing: the directory needs the model's tokenizer.json")
    try:
        return from_tokenizer_json(model.path)
    except (TokenizerJsonError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ModelLoadError(path, f"tokenizer: {exc}") from exc


def load_model(path: str, quantize: str = "none") -> tuple[ModelWeights, Tokenizer]:
    """The weights and tokenizer of a GGUF file or a Hugging Face directory. `quantize` (q8_0, q4_0,
    q4_k; "none" or "") quantizes a directory's F32/F16/BF16 matrices on load; a GGUF file is served
    as stored."""
    quantize = "" if quantize == "none" else quantize
    if is_hf_directory(path):
        model = load_hf_checkpoint(path, quantize)
    else:
        if quantize:
            raise ModelLoadError(path, f"--quantize {quantize} applies to safetensors directories; a GGUF file "
                                 "is served in the types it holds")
        model = load_gguf(path)
    return model, load_tokenizer(model)
