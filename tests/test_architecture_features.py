"""Every backend reads the architecture description: one tiny random model (F32 weights), run by
the native CPU loop, the numpy reference forward and the torch runner (on torch's CPU device), for
llama's description, for one with every optional feature on (NeoX rotary, q/k/v biases, per-head
q/k RMSNorm, post-sublayer norms, scaled embeddings), and for a Gemma-3-like one (GELU(tanh) gate,
interleaved local and global layers with their own rotary bases and a sliding window shorter than
the sequence and than one block, heads wider than hidden / heads, the file's attention scale,
final logit soft-capping). All three must agree with a dense, unpaged numpy transformer written
here from the formulas in architecture.py, and the features must change the result (so the
comparison is not of a feature left unread)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cyserve.fastpath.model.architecture import Activation, Architecture, RopeStyle
from cyserve.fastpath.model.batch import build_inputs
from cyserve.fastpath.model.cpu_runner import CpuModelRunner, reference_kernels
from cyserve.fastpath.model.weights import LayerWeights, ModelConfig, ModelWeights, Weight, WeightType
from cyserve.kernels import reference

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB, LAYERS = 64, 4, 2, 16, 96, 80, 2
EPS, THETA, BLOCK = 1e-5, 10000.0, 16
ATOL = 2e-3  # f32 kernels against f64 arithmetic, K/V rounded to fp16 by all of them

LLAMA = Architecture("llama")
EVERYTHING = Architecture("everything", rope_style=RopeStyle.NEOX, qkv_bias=True, qk_norm=True,
                          post_sublayer_norms=True, scale_embeddings=True)
# Gemma 3's description with a pattern of 2 (layers 0 and 2 local, 1 global) for a 3-layer model
GEMMA_LIKE = Architecture("gemma_like", rope_style=RopeStyle.NEOX, activation=Activation.GELU_TANH,
                          qk_norm=True, post_sublayer_norms=True, scale_embeddings=True,
                          sliding_window_pattern=2, local_rope_theta=50.0)
GEMMA_SHAPE = dict(head_dim=24, num_layers=3, sliding_window=7, attention_scale=0.3, final_logit_softcap=4.0)


def _weight(rng: np.random.Generator, name: str, rows: int, cols: int, scale: float = 0.15) -> Weight:
    values = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    return Weight(name, WeightType.F32, rows, cols, values.view(np.uint8).reshape(rows, cols * 4))


def _norm(rng: np.random.Generator, n: int) -> np.ndarray:
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)


def tiny_model(arch: Architecture, seed: int = 7, head_dim: int = HEAD_DIM, num_layers: int = LAYERS,
               **config) -> ModelWeights:
    """Random F32 weights; `config`: further ModelConfig fields (sliding_window, attention_scale, ...)."""
    rng = np.random.default_rng(seed)
    q, kv = HEADS * head_dim, KV_HEADS * head_dim
    layers = []
    for i in range(num_layers):
        w = lambda n, r, c: _weight(rng, f"blk.{i}.{n}", r, c)  # noqa: E731
        optional = {}
        if arch.qkv_bias:
            optional |= {name: (0.1 * rng.standard_normal(n)).astype(np.float32)
                         for name, n in (("bq", q), ("bk", kv), ("bv", kv))}
        if arch.qk_norm:
            optional |= {"q_norm": _norm(rng, head_dim), "k_norm": _norm(rng, head_dim)}
        if arch.post_sublayer_norms:
            optional |= {"post_attn_norm": _norm(rng, HIDDEN), "post_ffn_norm": _norm(rng, HIDDEN)}
        layers.append(LayerWeights(
            attn_norm=_norm(rng, HIDDEN), wq=w("attn_q", q, HIDDEN), wk=w("attn_k", kv, HIDDEN),
            wv=w("attn_v", kv, HIDDEN), wo=w("attn_output", HIDDEN, q), ffn_norm=_norm(rng, HIDDEN),
            w_gate=w("ffn_gate", FFN, HIDDEN), w_up=w("ffn_up", FFN, HIDDEN), w_down=w("ffn_down", HIDDEN, FFN),
            **optional))
    cfg = ModelConfig(name="tiny", architecture=arch.name, vocab_size=VOCAB, context_length=256,
                      hidden_size=HIDDEN, intermediate_size=FFN, num_layers=num_layers, num_heads=HEADS,
                      num_kv_heads=KV_HEADS, head_dim=head_dim, rope_theta=THETA, rms_norm_eps=EPS,
                      file_type="F32", **config)
    embd = _weight(rng, "token_embd", VOCAB, HIDDEN, scale=0.5)
    return ModelWeights("tiny.gguf", cfg, arch, embd, tuple(layers), _norm(rng, HIDDEN), embd)


def _f32(w: Weight) -> np.ndarray:
    return w.data.view(np.float32).reshape(w.rows, w.cols).astype(np.float64)


def _rms(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * weight


def dense_forward(model: ModelWeights, ids: list[int], arch: Architecture | None = None) -> np.ndarray:
    """f64 logits [T, vocab] of one sequence, every position: no blocks, no kernels but rope.
    `arch` (default the model's) says which features to apply."""
    arch, cfg, T = arch or model.arch, model.config, len(ids)
    Dh, neox = cfg.head_dim, arch.rope_style is RopeStyle.NEOX
    h = _f32(model.token_embd)[ids]
    if arch.scale_embeddings:
        h = h * np.sqrt(HIDDEN)
    positions = np.arange(T, dtype=np.int32)
    scale = cfg.attention_scale or 1.0 / np.sqrt(Dh)
    for i, layer in enumerate(model.layers):
        # every pattern-th layer is global; the others see the last `sliding_window` positions
        local = arch.sliding_window_pattern and cfg.sliding_window and (i + 1) % arch.sliding_window_pattern
        theta = (arch.local_rope_theta or THETA) if local else THETA  # 0: the global base
        offset = positions[:, None] - positions[None, :]  # query - key
        visible = (offset >= 0) & ((offset < cfg.sliding_window) if local else True)
        x = _rms(h, layer.attn_norm)
        q, k, v = (x @ _f32(w).T + (b if arch.qkv_bias else 0.0)
                   for w, b in ((layer.wq, layer.bq), (layer.wk, layer.bk), (layer.wv, layer.bv)))
        if arch.qk_norm:
            q = _rms(q.reshape(T, HEADS, Dh), layer.q_norm).reshape(T, -1)
            k = _rms(k.reshape(T, KV_HEADS, Dh), layer.k_norm).reshape(T, -1)
        q = reference.rope(q.copy(), positions, HEADS, Dh, theta, neox)
        k = reference.rope(k.copy(), positions, KV_HEADS, Dh, theta, neox)
        k = k.astype(np.float16).astype(np.float64).reshape(T, KV_HEADS, Dh)  # the fp16 cache
        v = v.astype(np.float16).astype(np.float64).reshape(T, KV_HEADS, Dh)
        attn = np.empty((T, HEADS, Dh))
        for head in range(HEADS):
            kv_head = head // (HEADS // KV_HEADS)
            scores = q.reshape(T, HEADS, Dh)[:, head] @ k[:, kv_head].T * scale
            scores = np.where(visible, scores, -np.inf)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            attn[:, head] = (p / p.sum(-1, keepdims=True)) @ v[:, kv_head]
        o = attn.reshape(T, -1) @ _f32(layer.wo).T
        h = h + (_rms(o, layer.post_attn_norm) if arch.post_sublayer_norms else o)
        x = _rms(h, layer.ffn_norm)
        gate, up = x @ _f32(layer.w_gate).T, x @ _f32(layer.w_up).T
        if arch.activation is Activation.GELU_TANH:
            act = 0.5 * gate * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (gate + 0.044715 * gate ** 3)))
        else:
            act = gate / (1.0 + np.exp(-gate))
        o = (act * up) @ _f32(layer.w_down).T
        h = h + (_rms(o, layer.post_ffn_norm) if arch.post_sublayer_norms else o)
    logits = _rms(h, model.output_norm) @ _f32(model.output).T
    cap = cfg.final_logit_softcap
    return cap * np.tanh(logits / cap) if cap else logits


IDS = [int(t) for t in np.random.default_rng(3).integers(0, VOCAB, 37)]
BLOCKS = [4, 1, 6]  # 37 tokens over three non-contiguous blocks


def _chunked(run, ids: list[int], chunks: tuple[int, ...] = (20, 17)) -> np.ndarray:
    """Every position's logits through a chunked prefill (20 tokens, then 17; or `chunks`, a 1
    being a decode step): paging and chunks."""
    rows, start = [], 0
    assert sum(chunks) == len(ids)
    for n in chunks:
        inputs = build_inputs([(ids, start, n, BLOCKS, True)], BLOCK)
        inputs.logits_indices = np.arange(n, dtype=np.int64)
        rows.append(np.asarray(run(inputs), dtype=np.float64))
        start += n
    return np.concatenate(rows)


GEMMA_CHUNKS = (5, 15, 1, 1, 14, 1)  # chunks shorter and longer than the window, decodes between


def _backends(model: ModelWeights) -> dict:
    native = CpuModelRunner(model, 8, BLOCK, max_num_tokens=32)
    numpy_ref = CpuModelRunner(model, 8, BLOCK, kernels=reference_kernels())
    runs = {"native": native.forward, "reference": numpy_ref.forward}
    from cyserve.fastpath.model.torch_runner import TorchModelRunner  # torch: a test extra

    torch_runner = TorchModelRunner(model, 8, BLOCK, device="cpu")
    runs["torch"] = lambda inputs: torch_runner.forward(inputs).numpy()
    return runs


@pytest.mark.parametrize("arch", [LLAMA, EVERYTHING], ids=lambda a: a.name)
def test_every_backend_matches_the_dense_formulas(arch):
    model = tiny_model(arch)
    want = dense_forward(model, IDS)
    for name, run in _backends(model).items():
        got = _chunked(run, IDS)
        err = np.abs(got - want).max()
        assert err < ATOL, f"{arch.name} on {name}: max |logit diff| {err:.2e} from the dense forward"


def test_gemma_like_model_on_every_backend():
    """GELU, local layers whose 7-key window is shorter than the 37-token sequence and than a
    16-token block, their own rotary base, 24-wide heads (q: 96 columns over a hidden of 64), the
    attention scale and the logit cap of the config; prefill chunks and decode steps."""
    model = tiny_model(GEMMA_LIKE, **GEMMA_SHAPE)
    assert [la.window for la in model.layer_attention] == [7, 0, 7]
    assert [la.rope_theta for la in model.layer_attention] == [50.0, THETA, 50.0]
    want = dense_forward(model, IDS)
    for name, run in _backends(model).items():
        for chunks in ((20, 17), GEMMA_CHUNKS):
            got = _chunked(run, IDS, chunks)
            err = np.abs(got - want).max()
            assert err < ATOL, f"gemma_like on {name}, chunks {chunks}: max |logit diff| {err:.2e}"


@pytest.mark.parametrize("change", [
    dict(arch=dataclasses.replace(GEMMA_LIKE, activation=Activation.SILU)),
    dict(arch=dataclasses.replace(GEMMA_LIKE, sliding_window_pattern=0)),  # every layer global
    dict(arch=dataclasses.replace(GEMMA_LIKE, local_rope_theta=0.0)),  # local layers on the global base
    dict(sliding_window=30),
    dict(attention_scale=0.0),  # 1/sqrt(head_dim)
    dict(final_logit_softcap=0.0),
], ids=["silu", "no-local-layers", "one-rotary-base", "wider-window", "default-scale", "no-cap"])
def test_each_gemma_feature_is_read(change):
    """Each Gemma 3 feature moves the logits, and the native loop follows the description."""
    base = tiny_model(GEMMA_LIKE, **GEMMA_SHAPE)
    arch = change.get("arch", GEMMA_LIKE)
    model = tiny_model(arch, **(GEMMA_SHAPE | {k: v for k, v in change.items() if k != "arch"}))
    got = _chunked(CpuModelRunner(model, 8, BLOCK, max_num_tokens=32).forward, IDS, GEMMA_CHUNKS)
    want = dense_forward(model, IDS)
    assert np.abs(got - want).max() < ATOL
    assert np.abs(want - dense_forward(base, IDS)).max() > 100 * ATOL


def test_the_features_change_the_logits():
    everything = tiny_model(EVERYTHING)
    gap = np.abs(dense_forward(everything, IDS) - dense_forward(everything, IDS, LLAMA)).max()
    assert gap > 100 * ATOL
    # one feature at a time: each is read (its logits move), by the native loop as by the formulas
    for feature in ("qkv_bias", "qk_norm", "post_sublayer_norms", "scale_embeddings"):
        model = tiny_model(dataclasses.replace(LLAMA, name=feature, **{feature: True}))
        got = _chunked(CpuModelRunner(model, 8, BLOCK, max_num_tokens=32).forward, IDS)
        assert np.abs(got - dense_forward(model, IDS)).max() < ATOL, feature
        assert np.abs(got - dense_forward(model, IDS, LLAMA)).max() > 100 * ATOL, feature


def test_a_features_tensors_must_match_the_description():
    model = tiny_model(EVERYTHING)
    with pytest.raises(ValueError, match="qkv_bias"):
        dataclasses.replace(model, arch=dataclasses.replace(EVERYTHING, qkv_bias=False))
