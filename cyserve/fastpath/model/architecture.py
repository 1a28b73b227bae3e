"""What an architecture is: a typed description of the features its layers use.

Each backend has one forward that reads this description (`cpu_forward.CpuForward`, the native
loop; `torch_runner.TorchModelRunner`; `reference_forward.ReferenceForward`, the numpy oracle).
Adding an architecture means describing it here and naming its GGUF tensors in the loader, plus
any kernel a feature needs; the layer loop is shared.

One block, as every backend runs it (optional steps in brackets):

    x = attn_norm(h)
    q, k, v = x @ Wq [+ bq], x @ Wk [+ bk], x @ Wv [+ bv]
    [q, k = q_norm(q), k_norm(k)]            per head, RMSNorm over head_dim
    q, k = rope(q), rope(k)                  interleaved pairs or NeoX halves; the layer's base
    o = paged_attention(q, k, v) @ Wo        scale from the file; a local layer's window bounds it
    h += [post_attention_norm](o)
    x = ffn_norm(h)
    h += [post_ffn_norm]((act(x @ Wgate) * (x @ Wup)) @ Wdown)      act: SiLU or GELU(tanh)

and around the blocks: h = embedding(ids) [* sqrt(hidden)]; logits = output_norm(h) @ Wout, with
Wout the embedding when the file ties them [, then cap * tanh(logits / cap)].

Files may fuse q, k and v into one tensor, and gate and up into another (Phi-3); the loaders
split such a tensor by rows (views of the same bytes), so no backend sees the fusion.

q has num_heads * head_dim columns, which need not be the hidden size (Gemma 3 270M: 4 x 256 over
640). What differs between layers (`LayerAttention`: sliding window, rotary base) is derived once
from the architecture and the file (`Architecture.layer_attention`), and every backend reads that.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from cyserve.fastpath.errors import ModelLoadError


class RopeStyle(enum.Enum):
    """Which pairs of a head's dimensions rotary embeddings rotate together."""

    INTERLEAVED = "interleaved"  # (2i, 2i+1): llama in GGUF (the converter permutes q and k to it)
    NEOX = "neox"  # (i, i + head_dim/2): Qwen, Gemma, Phi-3, GPT-NeoX


class Activation(enum.Enum):
    """The gate activation of the gated MLP: act(x @ Wgate) * (x @ Wup)."""

    SILU = "silu"
    GELU_TANH = "gelu_tanh"  # GELU's tanh approximation (Gemma's gelu_pytorch_tanh)


@dataclass(frozen=True)
class LayerAttention:
    """How one layer attends: its sliding window (0: every earlier position) and rotary base."""

    window: int
    rope_theta: float


@dataclass(frozen=True)
class Architecture:
    """The features of one architecture's layers; the defaults are llama's."""

    name: str
    rope_style: RopeStyle = RopeStyle.INTERLEAVED
    activation: Activation = Activation.SILU
    qkv_bias: bool = False  # q, k and v projections add a bias (Qwen2)
    qk_norm: bool = False  # RMSNorm of each q and k head before rotary (Qwen3, Gemma 3)
    post_sublayer_norms: bool = False  # RMSNorm of attention and MLP outputs before the residual add (Gemma)
    scale_embeddings: bool = False  # embeddings times sqrt(hidden_size) (Gemma)
    # Interleaved local (sliding-window) and global layers: every `sliding_window_pattern`-th
    # layer is global, the others local, when the file gives a sliding window (Gemma 3: 6, as
    # llama.cpp has it; the window is the file's `{arch}.attention.sliding_window`). 0: all global.
    sliding_window_pattern: int = 0
    local_rope_theta: float = 0.0  # local layers' rotary base (Gemma 3: 10000); 0: the file's

    def layer_attention(self, num_layers: int, sliding_window: int,
                        rope_theta: float) -> tuple[LayerAttention, ...]:
        """Each layer's window and rotary base, given the file's window (0: none) and base."""
        glob = LayerAttention(0, rope_theta)
        if not self.sliding_window_pattern or sliding_window <= 0:
            return (glob,) * num_layers
        local = LayerAttention(sliding_window, self.local_rope_theta or rope_theta)
        n = self.sliding_window_pattern
        return tuple(glob if (i + 1) % n == 0 else local for i in range(num_layers))


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama"),
    "qwen2": Architecture("qwen2", rope_style=RopeStyle.NEOX, qkv_bias=True),
    "qwen3": Architecture("qwen3", rope_style=RopeStyle.NEOX, qk_norm=True),
    # Phi-3's file holds q/k/v and gate/up fused (the loaders split the rows); its sliding window
    # is not applied, as llama.cpp does not (the key the converter writes is not the model's pattern)
    "phi3": Architecture("phi3", rope_style=RopeStyle.NEOX),
    "gemma3": Architecture("gemma3", rope_style=RopeStyle.NEOX, activation=Activation.GELU_TANH,
                           qk_norm=True, post_sublayer_norms=True, scale_embeddings=True,
                           sliding_window_pattern=6, local_rope_theta=10000.0),
}


def architecture(name: str, path: str) -> Architecture:
    """The description of the GGUF `general.architecture` `name`; ModelLoadError if unknown."""
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise ModelLoadError(path, f"architecture {name!r} is not supported (supported: "
                             f"{', '.join(sorted(ARCHITECTURES))})")
    return arch
