"""Load a Hugging Face model directory in place: config.json, model.safetensors (or shards named
by model.safetensors.index.json), the chat template and the end-of-sequence ids.

F32/F16/BF16 matrices are served as the bytes the files hold (memory-mapped, f32 accumulation in
the kernels); with `quantize` they are quantized on load into the same GGML blocks a GGUF file
holds, by the reference quantizers, so a Q8_0 matrix from either format is the same bytes.

Hugging Face keeps q and k in the layout its `rotate_half` expects (NeoX halves), where llama.cpp's
converter permutes llama's to interleaved pairs; a llama checkpoint is therefore described with
NeoX rotary and its weights are used unpermuted.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from cyserve.fastpath.errors import ModelLoadError
from cyserve.fastpath.model.architecture import Architecture, RopeStyle, architecture
from cyserve.fastpath.model.safetensors_file import SafetensorsFile, SafetensorsFormatError, StoredTensor
from cyserve.fastpath.model.weights import LayerWeights, ModelConfig, ModelWeights, Weight, WeightType
from cyserve.kernels import reference_quants

# config.json model_type -> our architecture name, and what the HF layout changes in it
MODEL_TYPES: dict[str, str] = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                               "gemma3_text": "gemma3", "gemma3": "gemma3"}
_NEOX_IN_HF = {"llama"}  # architectures whose GGUF form is permuted to interleaved rotary
SERVED_DTYPES = {"F32": WeightType.F32, "F16": WeightType.F16, "BF16": WeightType.BF16}
QUANTIZE_CHOICES = ("q8_0", "q4_0", "q4_k")


def quantize_choice(name: str) -> WeightType:
    try:
        return WeightType[name.upper()]
    except KeyError:
        raise ValueError(f"quantize {name!r} is not one of {', '.join(QUANTIZE_CHOICES)}") from None


def is_hf_directory(path: str) -> bool:
    return os.path.isdir(path)


def _read_json(path: str, required: bool = True) -> dict:
    if not os.path.isfile(path):
        if required:
            raise ModelLoadError(path, "missing: a Hugging Face model directory needs it")
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(path, f"not readable JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(path, "should hold a JSON object")
    return value


def _rope_theta(cfg: dict, path: str) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind not in ("default", None):
        raise ModelLoadError(path, f"rope scaling {kind!r} is not supported yet (only unscaled rotary)")
    return float(cfg.get("rope_theta", params.get("rope_theta", 10000.0)))


def _config(directory: str, cfg: dict, arch: Architecture, file_types: tuple[tuple[str, int], ...]) -> ModelConfig:
    path = os.path.join(directory, "config.json")

    def need(key: str) -> Any:
        if key not in cfg:
            raise ModelLoadError(path, f"key {key!r} is missing")
        return cfg[key]

    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    return ModelConfig(
        name=str(cfg.get("_name_or_path") or os.path.basename(os.path.normpath(directory))),
        architecture=arch.name, vocab_size=int(need("vocab_size")),
        context_length=int(cfg.get("max_position_embeddings", 2048)), hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")), num_layers=int(need("num_hidden_layers")),
        num_heads=heads, num_kv_heads=int(cfg.get("num_key_value_heads") or heads), head_dim=head_dim,
        rope_theta=_rope_theta(cfg, path), rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        file_type=max(file_types, key=lambda kv: kv[1])[0] if file_types else "F32", tensor_types=file_types,
    )


class _Tensors:
    """Every tensor of the checkpoint by name, over one file or the shards the index names."""

    def __init__(self, directory: str) -> None:
        single = os.path.join(directory, "model.safetensors")
        index = os.path.join(directory, "model.safetensors.index.json")
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}
        if os.path.isfile(index):
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelLoadError(index, "has no weight_map")
            for name, shard in weight_map.items():
                self.where[name] = self._open(os.path.join(directory, str(shard)), index)
        elif os.path.isfile(single):
            key = self._open(single, single)
            self.where = dict.fromkeys(self.files[key].tensors, key)
        else:
            raise ModelLoadError(directory, "no model.safetensors and no model.safetensors.index.json: "
                                 "the directory should hold the weights as safetensors")
        self.used: set[str] = set()

    def _open(self, path: str, named_by: str) -> str:
        if path not in self.files:
            if not os.path.isfile(path):
                raise ModelLoadError(path, f"missing: {os.path.basename(named_by)} names this shard")
            try:
                self.files[path] = SafetensorsFile(path)
            except SafetensorsFormatError as exc:
                raise ModelLoadError(path, f"not a safetensors file: {exc}") from exc
        return path

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> StoredTensor:
        shard = self.where.get(name)
        if shard is None or name not in self.files[shard]:
            raise ModelLoadError(shard or next(iter(self.files)), f"tensor {name!r} is missing")
        self.used.add(name)
        return self.files[shard].tensors[name]


def _as_f32(t: StoredTensor) -> np.ndarray:
    if t.dtype == "F32":
        return t.data.view(np.float32)
    if t.dtype == "F16":
        return t.data.view(np.float16).astype(np.float32)
    if t.dtype == "BF16":
        return (t.data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    raise TypeError(t.dtype)


class _Builder:
    def __init__(self, tensors: _Tensors, quantize: WeightType | None) -> None:
        self.tensors, self.quantize = tensors, quantize
        self.types: dict[str, int] = {}

    def _stored(self, name: str, shape: tuple[int, ...]) -> StoredTensor:
        t = self.tensors.get(name)
        if t.dtype not in SERVED_DTYPES:
            raise ModelLoadError(self.tensors.where[name], f"tensor {name!r} is {t.dtype}; cyserve serves "
                                 f"{', '.join(SERVED_DTYPES)} checkpoints (convert it, or use a GGUF file)")
        if t.shape != shape:
            raise ModelLoadError(self.tensors.where[name], f"tensor {name!r} is {list(t.shape)}, expected {list(shape)}")
        return t

    def matrix(self, name: str, rows: int, cols: int, quantizable: bool = True) -> Weight:
        t = self._stored(name, (rows, cols))
        wtype, data = SERVED_DTYPES[t.dtype], t.data.reshape(rows, -1)
        if self.quantize is not None and quantizable:
            if cols % reference_quants.BLOCK_LAYOUT[int(self.quantize)][0]:
                raise ModelLoadError(self.tensors.where[name], f"tensor {name!r} has {cols} columns, not a "
                                     f"multiple of {self.quantize.name}'s block: serve it without --quantize")
            wtype = self.quantize
            data = reference_quants.quantize(_as_f32(t).reshape(rows, cols), int(wtype))
        self.types[wtype.name] = self.types.get(wtype.name, 0) + 1
        return Weight(name, wtype, rows, cols, data)

    def vector(self, name: str, size: int, offset: float = 0.0) -> np.ndarray:
        values = _as_f32(self._stored(name, (size,)))
        self.types["F32"] = self.types.get("F32", 0) + 1
        return (values + np.float32(offset)).astype(np.float32) if offset else np.array(values, dtype=np.float32)


def _layer(b: _Builder, i: int, cfg: ModelConfig, arch: Architecture, norm_offset: float) -> LayerWeights:
    p = f"model.layers.{i}."
    h, q, kv, ffn = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    optional: dict[str, np.ndarray] = {}
    if arch.qkv_bias:
        optional |= {"bq": b.vector(p + "self_attn.q_proj.bias", q), "bk": b.vector(p + "self_attn.k_proj.bias", kv),
                     "bv": b.vector(p + "self_attn.v_proj.bias", kv)}
    if arch.qk_norm:
        optional |= {"q_norm": b.vector(p + "self_attn.q_norm.weight", cfg.head_dim, norm_offset),
                     "k_norm": b.vector(p + "self_attn.k_norm.weight", cfg.head_dim, norm_offset)}
    if arch.post_sublayer_norms:  # Gemma: four norms a layer, named for where they sit
        optional |= {"post_attn_norm": b.vector(p + "post_attention_layernorm.weight", h, norm_offset),
                     "post_ffn_norm": b.vector(p + "post_feedforward_layernorm.weight", h, norm_offset)}
        ffn_norm = b.vector(p + "pre_feedforward_layernorm.weight", h, norm_offset)
    else:
        ffn_norm = b.vector(p + "post_attention_layernorm.weight", h, norm_offset)
    return LayerWeights(
        attn_norm=b.vector(p + "input_layernorm.weight", h, norm_offset),
        wq=b.matrix(p + "self_attn.q_proj.weight", q, h), wk=b.matrix(p + "self_attn.k_proj.weight", kv, h),
        wv=b.matrix(p + "self_attn.v_proj.weight", kv, h), wo=b.matrix(p + "self_attn.o_proj.weight", h, q),
        ffn_norm=ffn_norm, w_gate=b.matrix(p + "mlp.gate_proj.weight", ffn, h),
        w_up=b.matrix(p + "mlp.up_proj.weight", ffn, h), w_down=b.matrix(p + "mlp.down_proj.weight", h, ffn),
        **optional,
    )


def _architecture(directory: str, cfg: dict) -> Architecture:
    path = os.path.join(directory, "config.json")
    model_type = cfg.get("model_type")
    if not model_type:
        raise ModelLoadError(path, "no model_type: say which architecture the checkpoint is")
    name = MODEL_TYPES.get(str(model_type))
    if name is None:
        raise ModelLoadError(path, f"model_type {model_type!r} is not supported (supported: "
                             f"{', '.join(sorted(MODEL_TYPES))})")
    try:
        arch = architecture(name, path)
    except ModelLoadError:
        raise ModelLoadError(path, f"model_type {model_type!r} (architecture {name!r}) is not supported yet") from None
    return dataclasses.replace(arch, rope_style=RopeStyle.NEOX) if name in _NEOX_IN_HF else arch


def _chat_template(directory: str, tokenizer_config: dict) -> str:
    jinja = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as fh:
            return fh.read()
    template = tokenizer_config.get("chat_template") or ""
    if isinstance(template, list):  # named templates: the default one serves chat
        named = {t.get("name"): t.get("template", "") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), "")
    return str(template)


def end_token_ids(directory: str) -> tuple[int, ...]:
    """The ids that end a generation, from generation_config.json and config.json."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        value = _read_json(os.path.join(directory, name), required=False).get("eos_token_id")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return tuple(ids)


SAMPLING_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def default_sampling(directory: str) -> tuple[tuple[str, float], ...]:
    """The sampling generation_config.json recommends, as vLLM applies it: each of
    SAMPLING_DEFAULTS the file sets (do_sample is not read: a request that wants greedy decoding
    asks for temperature 0)."""
    config = _read_json(os.path.join(directory, "generation_config.json"), required=False)
    found = []
    for name in SAMPLING_DEFAULTS:
        value = config.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append((name, int(value) if name == "top_k" else float(value)))
    return tuple(found)


def load_hf_checkpoint(directory: str, quantize: str = "") -> ModelWeights:
    """Open a Hugging Face model directory and check that cyserve can serve it; ModelLoadError
    naming the file and what to fix if not. `quantize`: "" (serve as stored) or a QUANTIZE_CHOICES."""
    directory = os.fspath(directory)
    cfg_json = _read_json(os.path.join(directory, "config.json"))
    cfg_json = cfg_json.get("text_config", cfg_json) if cfg_json.get("model_type") == "gemma3" else cfg_json
    arch = _architecture(directory, cfg_json)
    tensors = _Tensors(directory)
    b = _Builder(tensors, quantize_choice(quantize) if quantize else None)
    cfg = _config(directory, cfg_json, arch, ())
    norm_offset = 1.0 if arch.name == "gemma3" else 0.0  # Gemma's RMSNorm scales by (1 + w)
    embd = b.matrix("model.embed_tokens.weight", cfg.vocab_size, cfg.hidden_size)
    layers = tuple(_layer(b, i, cfg, arch, norm_offset) for i in range(cfg.num_layers))
    norm = b.vector("model.norm.weight", cfg.hidden_size, norm_offset)
    output = embd
    if "lm_head.weight" in tensors and not cfg_json.get("tie_word_embeddings", False):
        output = b.matrix("lm_head.weight", cfg.vocab_size, cfg.hidden_size)
    types = tuple(sorted(b.types.items(), key=lambda kv: (-kv[1], kv[0])))
    matrices = {k: v for k, v in b.types.items() if k != "F32"} or {"F32": 1}
    cfg = dataclasses.replace(cfg, tensor_types=types, file_type=max(matrices, key=matrices.get))
    tokenizer_config = _read_json(os.path.join(directory, "tokenizer_config.json"), required=False)
    return ModelWeights(directory, cfg, arch, embd, layers, norm, output,
                        chat_template=_chat_template(directory, tokenizer_config),
                        end_token_ids=end_token_ids(directory), default_sampling=default_sampling(directory))
