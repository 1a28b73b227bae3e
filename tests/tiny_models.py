"""Tiny random-weight models for the architecture tests: a transformers model built from a small
config with a fixed seed, and the same weights written as a GGUF file laid out the way llama.cpp's
`convert_hf_to_gguf.py` writes that architecture (its tensor names, norms and permutations,
metadata keys, vocabulary keys), each matrix stored as F32, F16 or Q8_0 by the numpy reference
quantizers.

An architecture's conversion is a `Conversion`: the GGUF architecture (whose tensor-name table,
from the gguf package, maps each Hugging Face name), the metadata it writes beyond the common
keys, how it changes a tensor on the way (llama's q/k permutation, Gemma's norm + 1), the tensors
it adds, and the vocabulary type. `write_gguf(model, path, conversion, wtype)` does the rest.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import gguf
import numpy as np
import torch

from cyserve.kernels import reference_quants

F32, F16, Q8_0 = "F32", "F16", "Q8_0"
WTYPES = (F32, F16, Q8_0)
_FILE_TYPES = {F32: 0, F16: 1, Q8_0: 7}  # general.file_type (llama_ftype) of each outtype


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.15, norm_center: float = 1.0) -> None:
    """Every parameter redrawn from a fixed seed: matrices N(0, scale^2), so logits spread and a
    top-1 is meaningful; norm weights norm_center + N(0, 0.1^2) (0 for Gemma, whose norms scale by
    1 + w), so a misread or unshifted norm shows; biases N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(norm_center + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(scale * noise)


# ---- vocabularies: the keys the converter's set_vocab writes ----

def sentencepiece_vocab(writer: gguf.GGUFWriter, vocab_size: int, add_space_prefix: bool | None = None) -> None:
    """A SentencePiece-type vocabulary (`tokenizer.ggml.model = llama`): Gemma's control tokens
    first (pad 0, eos 1, bos 2, unk 3), then `▁` pieces and letters with falling scores."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = ["▁"] + ["▁" + c for c in letters] + letters
    pieces += [f"▁w{i}" for i in range(vocab_size)]
    tokens = (specials + pieces)[:vocab_size]
    types = [gguf.TokenType.CONTROL] * len(specials)
    types[3] = gguf.TokenType.UNKNOWN
    types += [gguf.TokenType.NORMAL] * (vocab_size - len(specials))
    scores = [-1000.0] * len(specials) + [-float(i) for i in range(vocab_size - len(specials))]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types([int(t) for t in types[:vocab_size]])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if add_space_prefix is not None:
        writer.add_add_space_prefix(add_space_prefix)


def gpt2_vocab(writer: gguf.GGUFWriter, vocab_size: int, pre: str) -> None:
    """A GPT-2-type (byte-level BPE) vocabulary with the pre-tokenizer `pre` names: printable
    byte symbols, a few merges, and the last two ids as begin and end of text."""
    symbols = [chr(c) for c in range(ord("!"), ord("~") + 1)] + ["Ġ", "Ċ"]
    merges = ["Ġ t", "Ġ a", "h e", "i n", "Ġt he"]
    tokens = symbols + [m.replace(" ", "") for m in merges]
    tokens += [f"<extra_{i}>" for i in range(vocab_size)]
    tokens = tokens[:vocab_size - 2] + ["<|begin_of_text|>", "<|end_of_text|>"]
    types = [gguf.TokenType.NORMAL] * (vocab_size - 2) + [gguf.TokenType.CONTROL] * 2
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab_size - 2)
    writer.add_eos_token_id(vocab_size - 1)


# ---- architectures: what the converter's class for each one does ----

TensorEdit = Callable[[str, np.ndarray, dict], np.ndarray]


def _keep(name: str, values: np.ndarray, hparams: dict) -> np.ndarray:
    return values


def _rope_theta(hp: dict, layer_type: str | None = None) -> float:
    """The rotary base of a transformers config, as 4.x (rope_theta) or 5.x (rope_parameters) has it."""
    params = hp.get("rope_parameters") or {}
    if layer_type is not None:
        params = params[layer_type]
    return float(hp.get("rope_theta") or params.get("rope_theta", 10000.0))


def _plain_metadata(writer: gguf.GGUFWriter, hp: dict) -> None:
    """TextModel.set_gguf_parameters' rotary base (Qwen2Model and Qwen3Model add nothing else
    without rope scaling)."""
    writer.add_rope_freq_base(_rope_theta(hp))


def _llama_metadata(writer: gguf.GGUFWriter, hp: dict) -> None:
    """LlamaModel.set_gguf_parameters: the vocabulary size and the rotary width besides."""
    _plain_metadata(writer, hp)
    writer.add_vocab_size(hp["vocab_size"])
    writer.add_rope_dimension_count(hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"])


def permute_for_interleaved_rope(w: np.ndarray, num_heads: int) -> np.ndarray:
    """LlamaModel.permute: the rows of each head reordered from Hugging Face's NeoX halves
    (i, i + d/2) to the interleaved pairs (2i, 2i + 1) that llama's rotary in GGUF expects."""
    rows = w.shape[0]
    return w.reshape(num_heads, 2, rows // num_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_tensor(name: str, values: np.ndarray, hp: dict) -> np.ndarray:
    if name.endswith("attn_q.weight"):
        return permute_for_interleaved_rope(values, hp["num_attention_heads"])
    if name.endswith("attn_k.weight"):
        return permute_for_interleaved_rope(values, hp.get("num_key_value_heads") or hp["num_attention_heads"])
    return values


def llama3_rope_factors(hp: dict) -> np.ndarray:
    """LlamaModel.generate_extra_tensors for rope_type llama3: per pair, 1 for wavelengths under
    original_context / high_freq_factor, `factor` over original_context / low_freq_factor, and a
    smooth blend between."""
    rope = hp.get("rope_scaling") or hp["rope_parameters"]
    head_dim = hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"]
    freqs = 1.0 / _rope_theta(hp) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor, low, high = rope["factor"], rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    context = rope.get("original_max_position_embeddings", 8192)
    wavelen = 2 * np.pi / freqs
    smooth = (context / wavelen - low) / (high - low)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < context / high, 1.0, np.where(wavelen > context / low, factor, blended))
    return out.astype(np.float32)


def _llama3_extra(hp: dict) -> Iterator[tuple[str, np.ndarray]]:
    yield "rope_freqs.weight", llama3_rope_factors(hp)


def _phi3_metadata(writer: gguf.GGUFWriter, hp: dict) -> None:
    """Phi3MiniModel.set_gguf_parameters: the trained context, the rotary width and base, and the
    window (0 when the config has none)."""
    writer.add_rope_scaling_orig_ctx_len(hp.get("original_max_position_embeddings") or hp["max_position_embeddings"])
    writer.add_rope_dimension_count(hp["hidden_size"] // hp["num_attention_heads"])
    writer.add_rope_freq_base(_rope_theta(hp))
    writer.add_sliding_window(hp.get("sliding_window") or 0)


def _gemma3_metadata(writer: gguf.GGUFWriter, hp: dict) -> None:
    """Gemma3Model.set_gguf_parameters: head widths, the global rotary base, the window; no
    query_pre_attn_scalar (the loader derives the scale, as llama.cpp does)."""
    writer.add_rope_freq_base(_rope_theta(hp, "full_attention"))
    writer.add_sliding_window(hp["sliding_window"])
    if hp.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(hp["final_logit_softcapping"])


def _gemma3_tensor(name: str, values: np.ndarray, hp: dict) -> np.ndarray:
    """Gemma3Model.modify_tensors: the file stores every RMSNorm weight as 1 + w (Gemma3RMSNorm
    scales by 1 + w; llama.cpp's norm by w)."""
    return values + np.float32(1.0) if name.endswith("norm.weight") else values


@dataclass(frozen=True)
class Conversion:
    """How llama.cpp's converter writes one architecture."""

    arch: gguf.MODEL_ARCH
    metadata: Callable[[gguf.GGUFWriter, dict], None]
    tensor: TensorEdit = _keep
    vocab: Callable[[gguf.GGUFWriter, int], None] = sentencepiece_vocab
    extra_tensors: Callable[[dict], Iterator[tuple[str, np.ndarray]]] = field(default=lambda hp: iter(()))

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


GEMMA3 = Conversion(gguf.MODEL_ARCH.GEMMA3, _gemma3_metadata, _gemma3_tensor,
                    vocab=lambda w, n: sentencepiece_vocab(w, n, add_space_prefix=False))
LLAMA = Conversion(gguf.MODEL_ARCH.LLAMA, _llama_metadata, _llama_tensor)  # Llama 2 / Mistral: SentencePiece
LLAMA3 = Conversion(gguf.MODEL_ARCH.LLAMA, _llama_metadata, _llama_tensor, extra_tensors=_llama3_extra,
                    vocab=lambda w, n: gpt2_vocab(w, n, "llama-bpe"))
QWEN2 = Conversion(gguf.MODEL_ARCH.QWEN2, _plain_metadata, vocab=lambda w, n: gpt2_vocab(w, n, "qwen2"))
QWEN3 = Conversion(gguf.MODEL_ARCH.QWEN3, _plain_metadata, vocab=lambda w, n: gpt2_vocab(w, n, "qwen2"))
PHI3 = Conversion(gguf.MODEL_ARCH.PHI3, _phi3_metadata)


# ---- the writer ----

def _common_metadata(writer: gguf.GGUFWriter, hp: dict) -> None:
    """TextModel.set_gguf_parameters: the keys every architecture gets."""
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_block_count(hp["num_hidden_layers"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_head_count_kv(hp.get("num_key_value_heads") or hp["num_attention_heads"])
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    if hp.get("head_dim"):
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])


def _stored(values: np.ndarray, wtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The converter's choice of type: vectors stay F32; matrices take the outtype, F16 where
    Q8_0's 32-element blocks do not fit the row."""
    if values.ndim == 1 or wtype == F32:
        return values.astype(np.float32), gguf.GGMLQuantizationType.F32
    if wtype == F16 or values.shape[-1] % 32:
        return values.astype(np.float16), gguf.GGMLQuantizationType.F16
    return reference_quants.quantize(values, reference_quants.Q8_0), gguf.GGMLQuantizationType.Q8_0


def as_stored(model: torch.nn.Module, wtype: str) -> torch.nn.Module:
    """`model` with each matrix replaced by what a `wtype` file holds, decoded (F16 rounding, Q8_0
    blocks): transformers' forward of the same weights the file gives us. In place; returns it."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and wtype != F32:
                values = p.detach().float().numpy()
                data, qtype = _stored(values, wtype)
                if qtype == gguf.GGMLQuantizationType.Q8_0:
                    back = reference_quants.dequantize(data, reference_quants.Q8_0, values.shape[-1])
                else:
                    back = data.astype(np.float32)
                p.copy_(torch.from_numpy(np.asarray(back, dtype=np.float32).reshape(values.shape)))
    return model


def write_gguf(model: torch.nn.Module, path: str, conversion: Conversion, wtype: str = F32) -> str:
    """`model`'s weights written to `path` as llama.cpp's converter lays out `conversion`'s
    architecture, matrices stored as `wtype` (F32, F16 or Q8_0)."""
    if wtype not in WTYPES:
        raise ValueError(f"wtype {wtype!r} is not one of {', '.join(WTYPES)}")
    hp = model.config.to_dict()
    names = gguf.get_tensor_name_map(conversion.arch, hp["num_hidden_layers"])
    writer = gguf.GGUFWriter(path, conversion.name)
    writer.add_name(f"tiny-{conversion.name}")
    _common_metadata(writer, hp)
    conversion.metadata(writer, hp)
    writer.add_file_type(_FILE_TYPES[wtype])
    conversion.vocab(writer, hp["vocab_size"])
    tensors = list(conversion.extra_tensors(hp))
    for hf_name, param in model.state_dict().items():
        if hf_name == "lm_head.weight" and hp.get("tie_word_embeddings"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise KeyError(f"{conversion.name}: no GGUF name for {hf_name!r}")
        values = param.detach().to(torch.float32).numpy()
        tensors.append((name, conversion.tensor(name, values, hp)))
    for name, values in tensors:
        data, qtype = _stored(np.ascontiguousarray(values), wtype)
        writer.add_tensor(name, data, raw_dtype=qtype if qtype != gguf.GGMLQuantizationType.F32 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---- the models ----

def gemma3(seed: int = 0, sliding_window: int = 6, num_layers: int = 7, softcap: float | None = None):
    """A Gemma 3 text model: 2 heads of 48 over a hidden of 64 (q: 96 columns), one kv head, a
    pattern of 6 (layer 5 global, the rest local) with the window given, rotary bases 1e6 global
    and 1e4 local, query_pre_attn_scalar = head_dim (what the GGUF implies)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=48, query_pre_attn_scalar=48,
                              sliding_window=sliding_window, max_position_embeddings=256, rms_norm_eps=1e-6,
                              final_logit_softcapping=softcap, attn_implementation="eager")
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).eval()
    randomize(model, seed, norm_center=0.0)
    return model


def _small(config_cls, **overrides):
    """A config of the common tiny shape: hidden 64, 4 heads of 16 over 2 kv heads, 3 layers."""
    base = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=94,
                eos_token_id=95, pad_token_id=0, attn_implementation="eager")
    return config_cls(**(base | overrides))


def _built(model_cls, config, seed: int):
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    randomize(model, seed)
    return model


def llama(seed: int = 0):
    """Llama 2 / Mistral shape: untied output, interleaved rotary in the file."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _built(LlamaForCausalLM, _small(LlamaConfig, tie_word_embeddings=False, bos_token_id=2,
                                           eos_token_id=1), seed)


def qwen2(seed: int = 0):
    """Qwen2.5 shape: q/k/v biases, tied embeddings, rotary base 1e6."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _built(Qwen2ForCausalLM, _small(Qwen2Config, tie_word_embeddings=True, rope_theta=1e6), seed)


def qwen3(seed: int = 0):
    """Qwen3 shape: per-head q/k RMSNorm, heads of 32 (q: 128 columns over a hidden of 64), untied."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return _built(Qwen3ForCausalLM, _small(Qwen3Config, head_dim=32, tie_word_embeddings=False,
                                           rope_theta=1e6), seed)


def phi3(seed: int = 0):
    """Phi-3 mini shape: fused qkv and gate/up, no sliding window."""
    from transformers import Phi3Config, Phi3ForCausalLM

    return _built(Phi3ForCausalLM, _small(Phi3Config, tie_word_embeddings=False, sliding_window=None,
                                          bos_token_id=1, eos_token_id=2), seed)


def llama3(seed: int = 0):
    """Llama 3.1 shape: rope_type llama3 (factor 8), with an original context of 32 so the
    factors move pairs the 40-token test sequence turns visibly."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=32)
    return _built(LlamaForCausalLM, _small(LlamaConfig, tie_word_embeddings=True, rope_parameters=rope), seed)
