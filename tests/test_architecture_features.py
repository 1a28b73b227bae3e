"""Every backend reads the architecture description: one tiny random model (F32 weights), run by
the native CPU loop, the numpy reference forward and the torch runner (on torch's CPU device), for
llama's description and for one with every optional feature on (NeoX rotary, q/k/v biases,
per-head q/k RMSNorm, post-sublayer norms, scaled embeddings). All three must agree with a dense,
unpaged numpy transformer written here from the formulas in architecture.py, and the features
must change the result (so the comparison is not of a feature left unread)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cyserve.fastpath.model.architecture import Architecture, RopeStyle
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


def _weight(rng: np.random.Generator, name: str, rows: int, cols: int, scale: float = 0.15) -> Weight:
    values = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    return Weight(name, WeightType.F32, rows, cols, values.view(np.uint8).reshape(rows, cols * 4))


def _norm(rng: np.random.Generator, n: int) -> np.ndarray:
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)


def tiny_model(arch: Architecture, seed: int = 7) -> ModelWeights:
    rng = np.random.default_rng(seed)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    layers = []
    for i in range(LAYERS):
        w = lambda n, r, c: _weight(rng, f"blk.{i}.{n}", r, c)  # noqa: E731
        optional = {}
        if arch.qkv_bias:
            optional |= {name: (0.1 * rng.standard_normal(n)).astype(np.float32)
                         for name, n in (("bq", q), ("bk", kv), ("bv", kv))}
        if arch.qk_norm:
            optional |= {"q_norm": _norm(rng, HEAD_DIM), "k_norm": _norm(rng, HEAD_DIM)}
        if arch.post_sublayer_norms:
            optional |= {"post_attn_norm": _norm(rng, HIDDEN), "post_ffn_norm": _norm(rng, HIDDEN)}
        layers.append(LayerWeights(
            attn_norm=_norm(rng, HIDDEN), wq=w("attn_q", q, HIDDEN), wk=w("attn_k", kv, HIDDEN),
            wv=w("attn_v", kv, HIDDEN), wo=w("attn_output", HIDDEN, q), ffn_norm=_norm(rng, HIDDEN),
            w_gate=w("ffn_gate", FFN, HIDDEN), w_up=w("ffn_up", FFN, HIDDEN), w_down=w("ffn_down", HIDDEN, FFN),
            **optional))
    config = ModelConfig(name="tiny", architecture=arch.name, vocab_size=VOCAB, context_length=256,
                         hidden_size=HIDDEN, intermediate_size=FFN, num_layers=LAYERS, num_heads=HEADS,
                         num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, rope_theta=THETA, rms_norm_eps=EPS,
                         file_type="F32")
    embd = _weight(rng, "token_embd", VOCAB, HIDDEN, scale=0.5)
    return ModelWeights("tiny.gguf", config, arch, embd, tuple(layers), _norm(rng, HIDDEN), embd)


def _f32(w: Weight) -> np.ndarray:
    return w.data.view(np.float32).reshape(w.rows, w.cols).astype(np.float64)


def _rms(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * weight


def dense_forward(model: ModelWeights, ids: list[int], arch: Architecture | None = None) -> np.ndarray:
    """f64 logits [T, vocab] of one sequence, every position: no blocks, no kernels but rope.
    `arch` (default the model's) says which features to apply."""
    arch, T = arch or model.arch, len(ids)
    neox = arch.rope_style is RopeStyle.NEOX
    h = _f32(model.token_embd)[ids]
    if arch.scale_embeddings:
        h = h * np.sqrt(HIDDEN)
    positions = np.arange(T, dtype=np.int32)
    causal = np.tril(np.ones((T, T), dtype=bool))
    for layer in model.layers:
        x = _rms(h, layer.attn_norm)
        q, k, v = (x @ _f32(w).T + (b if arch.qkv_bias else 0.0)
                   for w, b in ((layer.wq, layer.bq), (layer.wk, layer.bk), (layer.wv, layer.bv)))
        if arch.qk_norm:
            q = _rms(q.reshape(T, HEADS, HEAD_DIM), layer.q_norm).reshape(T, -1)
            k = _rms(k.reshape(T, KV_HEADS, HEAD_DIM), layer.k_norm).reshape(T, -1)
        q = reference.rope(q.copy(), positions, HEADS, HEAD_DIM, THETA, neox)
        k = reference.rope(k.copy(), positions, KV_HEADS, HEAD_DIM, THETA, neox)
        k = k.astype(np.float16).astype(np.float64).reshape(T, KV_HEADS, HEAD_DIM)  # the fp16 cache
        v = v.astype(np.float16).astype(np.float64).reshape(T, KV_HEADS, HEAD_DIM)
        attn = np.empty((T, HEADS, HEAD_DIM))
        for head in range(HEADS):
            kv_head = head // (HEADS // KV_HEADS)
            scores = q.reshape(T, HEADS, HEAD_DIM)[:, head] @ k[:, kv_head].T / np.sqrt(HEAD_DIM)
            scores = np.where(causal, scores, -np.inf)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            attn[:, head] = (p / p.sum(-1, keepdims=True)) @ v[:, kv_head]
        o = attn.reshape(T, -1) @ _f32(layer.wo).T
        h = h + (_rms(o, layer.post_attn_norm) if arch.post_sublayer_norms else o)
        x = _rms(h, layer.ffn_norm)
        gate, up = x @ _f32(layer.w_gate).T, x @ _f32(layer.w_up).T
        o = (gate / (1.0 + np.exp(-gate)) * up) @ _f32(layer.w_down).T
        h = h + (_rms(o, layer.post_ffn_norm) if arch.post_sublayer_norms else o)
    return _rms(h, model.output_norm) @ _f32(model.output).T


IDS = [int(t) for t in np.random.default_rng(3).integers(0, VOCAB, 37)]
BLOCKS = [4, 1, 6]  # 37 tokens over three non-contiguous blocks


def _chunked(run, ids: list[int]) -> np.ndarray:
    """Every position's logits through a chunked prefill (20 tokens, then 17): paging and chunks."""
    rows = []
    for start, n in ((0, 20), (20, len(ids) - 20)):
        inputs = build_inputs([(ids, start, n, BLOCKS, True)], BLOCK)
        inputs.logits_indices = np.arange(n, dtype=np.int64)
        rows.append(np.asarray(run(inputs), dtype=np.float64))
    return np.concatenate(rows)


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
