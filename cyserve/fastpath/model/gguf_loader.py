"""Load a GGUF file in place: hyperparameters, the architecture's description, tensors, tokenizer
metadata and chat template.

Quantized tensors stay as the bytes on disk (a read-only memory map); nothing is converted at load,
so load time is milliseconds and resident memory is the pages the forward pass touches.
"""
from __future__ import annotations

import os

import numpy as np

from cyserve.fastpath.errors import ModelLoadError
from cyserve.kernels.cpu.quant_matmul import block_elems
from cyserve.fastpath.model.architecture import Architecture, architecture
from cyserve.fastpath.model.gguf_file import GGUFFile, GGUFFormatError
from cyserve.fastpath.model.weights import LayerWeights, ModelConfig, ModelWeights, Weight, WeightType


def _open_reader(path: str) -> GGUFFile:
    if not os.path.exists(path):
        raise ModelLoadError(path, "no such file")
    if not os.path.isfile(path):
        raise ModelLoadError(path, "not a regular file")
    try:
        return GGUFFile(path)
    except PermissionError as exc:
        raise ModelLoadError(path, f"not readable ({exc.strerror})") from exc
    except GGUFFormatError as exc:
        if "magic" in str(exc):
            raise ModelLoadError(path, "not a GGUF file (bad magic number)") from exc
        size = os.path.getsize(path)
        raise ModelLoadError(path, f"truncated or corrupt GGUF ({size} bytes): {exc}") from exc


def _field(reader, key: str, path: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ModelLoadError(path, f"metadata key {key!r} is missing")
        return default
    return field.contents()


def _weight(reader_tensors: dict, name: str, path: str) -> Weight:
    tensor = reader_tensors.get(name)
    if tensor is None:
        raise ModelLoadError(path, f"tensor {name!r} is missing")
    try:
        wtype = WeightType(int(tensor.tensor_type))
    except ValueError:
        raise ModelLoadError(
            path, f"tensor {name!r} has type {tensor.tensor_type.name}, which cyserve does not "
            f"support yet (supported: {', '.join(t.name for t in WeightType)})"
        ) from None
    shape = [int(s) for s in tensor.shape]  # GGUF order: [cols, rows]
    cols = shape[0]
    rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    raw = np.asarray(tensor.data)
    data = raw.reshape(-1).view(np.uint8).reshape(rows, -1)
    return Weight(name, wtype, rows, cols, data)


def _vector(reader_tensors: dict, name: str, path: str, size: int) -> np.ndarray:
    w = _weight(reader_tensors, name, path)
    if w.wtype != WeightType.F32 or w.rows * w.cols != size:
        raise ModelLoadError(path, f"tensor {name!r} should be F32[{size}], got {w.wtype.name}[{w.rows}x{w.cols}]")
    return w.data.view(np.float32).reshape(size)


def _dominant_type(tensors: dict) -> str:
    counts: dict[str, int] = {}
    for t in tensors.values():
        if len(t.shape) > 1:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + int(t.n_elements)
    return max(counts, key=counts.get) if counts else "F32"


def _tensor_types(tensors: dict) -> tuple[tuple[str, int], ...]:
    counts: dict[str, int] = {}
    for t in tensors.values():
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _head_dim(reader, arch: str, hidden: int, heads: int, path: str) -> int:
    """Width of one attention head: `attention.key_length` (Gemma 3: 256 over a hidden of 640 with
    4 heads), else the rotary width, else hidden / heads."""
    rope_dims = reader.fields.get(f"{arch}.rope.dimension_count")
    head_dim = int(_field(reader, f"{arch}.attention.key_length", path,
                          default=int(rope_dims.contents()) if rope_dims else hidden // heads))
    value_dim = int(_field(reader, f"{arch}.attention.value_length", path, default=head_dim))
    if head_dim <= 0 or head_dim % 2:
        raise ModelLoadError(path, f"head_dim {head_dim} must be a positive even number (rotary pairs)")
    if value_dim != head_dim:
        raise ModelLoadError(path, f"value heads of {value_dim} over key heads of {head_dim} are not supported")
    if rope_dims is not None and int(rope_dims.contents()) != head_dim:
        raise ModelLoadError(path, f"partial rotary embeddings ({int(rope_dims.contents())} of {head_dim} "
                             f"dimensions) are not supported")
    return head_dim


def _attention_scale(reader, arch: str, hidden: int, heads: int, head_dim: int, num_layers: int,
                     path: str) -> float:
    """The factor of the attention scores: the file's `attention.scale` when it has one; Gemma 3
    files carry none, and its query_pre_attn_scalar is head_dim, but hidden / heads for the 27B
    (62 layers), as llama.cpp sets it; 1/sqrt(head_dim) for everything else."""
    scale = float(_field(reader, f"{arch}.attention.scale", path, default=0.0))
    if scale:
        return scale
    if arch == "gemma3" and num_layers == 62:
        return 1.0 / float(np.sqrt(hidden // heads))
    return 1.0 / float(np.sqrt(head_dim))


def _config(reader, path: str, tensors: dict) -> ModelConfig:
    arch = str(_field(reader, "general.architecture", path))
    architecture(arch, path)  # refuses an unknown one before its keys are read
    hidden = int(_field(reader, f"{arch}.embedding_length", path))
    heads = int(_field(reader, f"{arch}.attention.head_count", path))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = int(_field(reader, f"{arch}.vocab_size", path, default=len(tokens.contents()) if tokens else -1))
    if vocab <= 0:
        raise ModelLoadError(path, "vocabulary size unknown (no vocab_size and no tokenizer.ggml.tokens)")
    head_dim = _head_dim(reader, arch, hidden, heads, path)
    num_layers = int(_field(reader, f"{arch}.block_count", path))
    return ModelConfig(
        name=str(_field(reader, "general.name", path, default=os.path.basename(path))),
        architecture=arch,
        vocab_size=vocab,
        context_length=int(_field(reader, f"{arch}.context_length", path)),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length", path)),
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", path, default=heads)),
        head_dim=head_dim,
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", path, default=10000.0)),
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", path, default=1e-5)),
        file_type=_dominant_type(tensors),
        tensor_types=_tensor_types(tensors),
        attention_scale=_attention_scale(reader, arch, hidden, heads, head_dim, num_layers, path),
        sliding_window=int(_field(reader, f"{arch}.attention.sliding_window", path, default=0)),
        final_logit_softcap=float(_field(reader, f"{arch}.final_logit_softcapping", path, default=0.0)),
    )


def _check_shape(w: Weight, rows: int, cols: int, path: str) -> Weight:
    if (w.rows, w.cols) != (rows, cols):
        raise ModelLoadError(path, f"tensor {w.name!r} is [{w.rows}x{w.cols}], expected [{rows}x{cols}]")
    block = block_elems(int(w.wtype))
    if w.cols % block:
        raise ModelLoadError(path, f"tensor {w.name!r} has {w.cols} columns, not a multiple of the "
                             f"{block}-element block of {w.wtype.name}")
    return w


def _optional_vectors(tensors: dict, i: int, cfg: ModelConfig, arch: Architecture, path: str) -> dict:
    """The layer's tensors for the architecture's optional features (llama.cpp's tensor names)."""
    p = f"blk.{i}."
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    wanted: dict[str, tuple[str, int]] = {}
    if arch.qkv_bias:
        wanted |= {"bq": ("attn_q.bias", q), "bk": ("attn_k.bias", kv), "bv": ("attn_v.bias", kv)}
    if arch.qk_norm:
        wanted |= {"q_norm": ("attn_q_norm.weight", cfg.head_dim), "k_norm": ("attn_k_norm.weight", cfg.head_dim)}
    if arch.post_sublayer_norms:
        wanted |= {"post_attn_norm": ("post_attention_norm.weight", cfg.hidden_size),
                   "post_ffn_norm": ("post_ffw_norm.weight", cfg.hidden_size)}
    return {field: _vector(tensors, p + name, path, size) for field, (name, size) in wanted.items()}


def split_rows(w: Weight, sizes: tuple[int, ...]) -> tuple[Weight, ...]:
    """A fused tensor's parts, consecutive runs of `sizes` rows: views of the same bytes."""
    parts, start = [], 0
    for size in sizes:
        parts.append(Weight(f"{w.name}[{start}:{start + size}]", w.wtype, size, w.cols, w.data[start:start + size]))
        start += size
    return tuple(parts)


def _layer(tensors: dict, i: int, cfg: ModelConfig, arch: Architecture, path: str) -> LayerWeights:
    p = f"blk.{i}."
    h, kv, ffn = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    q = cfg.num_heads * cfg.head_dim
    w = lambda n, r, c: _check_shape(_weight(tensors, p + n, path), r, c, path)  # noqa: E731
    if p + "attn_qkv.weight" in tensors:  # Phi-3: q, k and v rows in one tensor
        wq, wk, wv = split_rows(w("attn_qkv.weight", q + 2 * kv, h), (q, kv, kv))
    else:
        wq, wk, wv = w("attn_q.weight", q, h), w("attn_k.weight", kv, h), w("attn_v.weight", kv, h)
    if p + "ffn_gate.weight" not in tensors and p + "ffn_up.weight" in tensors:  # Phi-3: gate rows, then up
        w_gate, w_up = split_rows(w("ffn_up.weight", 2 * ffn, h), (ffn, ffn))
    else:
        w_gate, w_up = w("ffn_gate.weight", ffn, h), w("ffn_up.weight", ffn, h)
    return LayerWeights(
        attn_norm=_vector(tensors, p + "attn_norm.weight", path, h),
        wq=wq, wk=wk, wv=wv,
        wo=w("attn_output.weight", h, q),
        ffn_norm=_vector(tensors, p + "ffn_norm.weight", path, h),
        w_gate=w_gate, w_up=w_up,
        w_down=w("ffn_down.weight", h, ffn),
        **_optional_vectors(tensors, i, cfg, arch, path),
    )


def _rope_freqs(tensors: dict, cfg: ModelConfig, path: str) -> np.ndarray | None:
    """Llama 3.1's rope scaling: the converter's rope_freqs tensor, f32[head_dim / 2] divisors of
    the rotary frequencies (every layer's blk.N.rope_freqs, where present, is the same tensor)."""
    if "rope_freqs.weight" not in tensors:
        return None
    factors = _vector(tensors, "rope_freqs.weight", path, cfg.head_dim // 2)
    if not (np.isfinite(factors).all() and (factors > 0).all()):
        raise ModelLoadError(path, "tensor 'rope_freqs.weight' must hold finite factors > 0")
    return factors


def load_gguf(path: str) -> ModelWeights:
    """Open `path` memory-mapped and check that cyserve can serve it; raise ModelLoadError if not."""
    path = os.fspath(path)
    reader = _open_reader(path)
    tensors = {t.name: t for t in reader.tensors}
    try:
        cfg = _config(reader, path, tensors)
        arch = architecture(cfg.architecture, path)
        embd = _check_shape(_weight(tensors, "token_embd.weight", path), cfg.vocab_size, cfg.hidden_size, path)
        output = embd
        if "output.weight" in tensors:
            output = _check_shape(_weight(tensors, "output.weight", path), cfg.vocab_size, cfg.hidden_size, path)
        layers = tuple(_layer(tensors, i, cfg, arch, path) for i in range(cfg.num_layers))
        norm = _vector(tensors, "output_norm.weight", path, cfg.hidden_size)
        rope_freqs = _rope_freqs(tensors, cfg, path)
    except ModelLoadError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(path, f"malformed metadata or tensor: {exc}") from exc
    template = reader.fields.get("tokenizer.chat_template")
    return ModelWeights(path, cfg, arch, embd, layers, norm, output,
                        chat_template=str(template.contents()) if template else "", reader=reader,
                        rope_freqs=rope_freqs)

