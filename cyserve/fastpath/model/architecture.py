"""What an architecture is: a typed description of the features its layers use.

Each backend has one forward that reads this description (`cpu_forward.CpuForward`, the native
loop; `torch_runner.TorchModelRunner`; `reference_forward.ReferenceForward`, the numpy oracle).
Adding an architecture means describing it here and naming its GGUF tensors in the loader, plus
any kernel a feature needs; the layer loop is shared.

One block, as every backend runs it (optional steps in brackets):

    x = attn_norm(h)
    q, k, v = x @ Wq [+ bq], x @ Wk [+ bk], x @ Wv [+ bv]
    [q, k = q_norm(q), k_norm(k)]            per head, RMSNorm over head_dim
    q, k = rope(q), rope(k)                  interleaved pairs or NeoX halves
    o = paged_attention(q, k, v) @ Wo
    h += [post_attention_norm](o)
    x = ffn_norm(h)
    h += [post_ffn_norm]((act(x @ Wgate) * (x @ Wup)) @ Wdown)

and around the blocks: h = embedding(ids) [* sqrt(hidden)]; logits = output_norm(h) @ Wout, with
Wout the embedding when the file ties them.
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


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama"),
}


def architecture(name: str, path: str) -> Architecture:
    """The description of the GGUF `general.architecture` `name`; ModelLoadError if unknown."""
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise ModelLoadError(path, f"architecture {name!r} is not supported (supported: "
                             f"{', '.join(sorted(ARCHITECTURES))})")
    return arch
