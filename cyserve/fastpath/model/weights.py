"""The in-memory form of a model, whatever file it came from: typed hyperparameters, the
architecture's description and the weights as raw GGML rows (memory-mapped where the file allows).
Loaders (`gguf_loader`) produce it; every forward reads it."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from cyserve.fastpath.model.architecture import Architecture, LayerAttention


class WeightType(enum.IntEnum):
    """GGML tensor types the kernels can read in place (values are GGML's type ids)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30


@dataclass(frozen=True)
class Weight:
    """A `[rows, cols]` matrix as raw row bytes (`uint8[rows, row_bytes]`) plus its GGML type."""

    name: str
    wtype: WeightType
    rows: int
    cols: int
    data: np.ndarray  # uint8[rows, row_bytes], C-contiguous, memory-mapped


@dataclass(frozen=True)
class ModelConfig:
    name: str
    architecture: str
    vocab_size: int
    context_length: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    file_type: str  # the dominant weight type, e.g. "Q4_1"
    tensor_types: tuple[tuple[str, int], ...] = ()  # (GGML type name, number of tensors), most first
    attention_scale: float = 0.0  # scores = q.k * attention_scale; 0: 1/sqrt(head_dim)
    sliding_window: int = 0  # keys a local layer's query sees, its own included; 0: no local layers
    final_logit_softcap: float = 0.0  # logits = cap * tanh(logits / cap); 0: none

    @property
    def query_scale(self) -> float:
        """The factor of the attention scores."""
        return self.attention_scale or 1.0 / float(np.sqrt(self.head_dim))


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray  # f32[hidden]
    wq: Weight
    wk: Weight
    wv: Weight
    wo: Weight
    ffn_norm: np.ndarray  # f32[hidden]
    w_gate: Weight
    w_up: Weight
    w_down: Weight
    # Present when the architecture has the feature (Architecture.qkv_bias, qk_norm,
    # post_sublayer_norms), None otherwise.
    bq: np.ndarray | None = None  # f32[heads * head_dim]
    bk: np.ndarray | None = None  # f32[kv_heads * head_dim]
    bv: np.ndarray | None = None
    q_norm: np.ndarray | None = None  # f32[head_dim]
    k_norm: np.ndarray | None = None
    post_attn_norm: np.ndarray | None = None  # f32[hidden]
    post_ffn_norm: np.ndarray | None = None


@dataclass(frozen=True)
class ModelWeights:
    """A loaded model: what every forward reads."""

    path: str
    config: ModelConfig
    arch: Architecture
    token_embd: Weight
    layers: tuple[LayerWeights, ...]
    output_norm: np.ndarray
    output: Weight  # token_embd itself when the embeddings are tied
    chat_template: str = ""  # the file's own template ("" when it has none)
    reader: object = None  # gguf_file.GGUFFile: the tokenizer is read from it (None: not a GGUF)
    end_token_ids: tuple[int, ...] = ()  # ids that end a generation besides the tokenizer's (HF generation_config)
    default_sampling: tuple[tuple[str, float], ...] = ()  # the model's recommended sampling (HF generation_config)
    # f32[head_dim / 2]: divisors of the rotary frequencies, every layer (Llama 3.1's rope scaling:
    # the GGUF's rope_freqs tensor, or computed from an HF config's rope_scaling); None: none
    rope_freqs: np.ndarray | None = None

    @property
    def layer_attention(self) -> tuple[LayerAttention, ...]:
        """Each layer's sliding window and rotary base (architecture.Architecture.layer_attention)."""
        cfg = self.config
        return self.arch.layer_attention(cfg.num_layers, cfg.sliding_window, cfg.rope_theta)

    def __post_init__(self) -> None:
        """A layer holds a feature's tensors exactly when the architecture has the feature, so a
        backend that reads them reads the description."""
        for i, layer in enumerate(self.layers):
            for feature, names in FEATURE_TENSORS.items():
                wanted = getattr(self.arch, feature)
                present = [getattr(layer, name) is not None for name in names]
                if present != [wanted] * len(names):
                    raise ValueError(f"layer {i}: {', '.join(names)} must be given exactly when the "
                                     f"architecture has {feature} ({self.arch.name} has {feature}={wanted})")


# Architecture feature -> the LayerWeights fields it brings.
FEATURE_TENSORS: dict[str, tuple[str, ...]] = {
    "qkv_bias": ("bq", "bk", "bv"),
    "qk_norm": ("q_norm", "k_norm"),
    "post_sublayer_norms": ("post_attn_norm", "post_ffn_norm"),
}
