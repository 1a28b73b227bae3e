"""Each architecture as users' files hold it: a tiny random-weight transformers model written as GGUF
the way llama.cpp's converter lays it out (tests/tiny_models.py), loaded by our loader and run by
the native CPU loop (and the torch runner), against transformers' own fp32 forward of the same
weights. Sequences are longer than any sliding window, and run as a chunked prefill with decode
steps, so paging, chunks and windows are all on the path.

transformers runs the weights the file holds (`tiny_models.as_stored`: F16 rounding, Q8_0 blocks
decoded) in f32. Bounds, for logits of magnitude up to ~5: F32 and F16 weights are multiplied in
f32, so what differs is the fp16 KV cache: within 1e-2 (2e-3 measured). Q8_0 rows are multiplied
with the activations quantized to 8-bit blocks as well: within 0.25 (0.17 measured). Top-1 equal
wherever the reference's best logit leads its second by more than 0.05 (F32/F16) or 0.1 (Q8_0).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cyserve.fastpath.model.batch import build_inputs
from cyserve.fastpath.model.cpu_runner import CpuModelRunner
from cyserve.fastpath.model.gguf_loader import load_gguf
from tests import tiny_models

BLOCK = 16
BOUND = {tiny_models.F32: 1e-2, tiny_models.F16: 1e-2, tiny_models.Q8_0: 0.25}
CLEAR_LEAD = {tiny_models.F32: 0.05, tiny_models.F16: 0.05, tiny_models.Q8_0: 0.1}
IDS = [int(t) for t in np.random.default_rng(11).integers(5, 96, 40)]
CHUNKS = (5, 15, 1, 1, 17, 1)  # prefill chunks shorter and longer than the windows, decodes between
BLOCKS = [5, 0, 3]  # 40 tokens over three non-contiguous 16-token blocks


def chunked_logits(run, ids: list[int], chunks: tuple[int, ...] = CHUNKS) -> np.ndarray:
    """Every position's logits, the sequence fed as `chunks` (a 1 being a decode step)."""
    assert sum(chunks) == len(ids)
    rows, start = [], 0
    for n in chunks:
        inputs = build_inputs([(ids, start, n, BLOCKS, True)], BLOCK)
        inputs.logits_indices = np.arange(n, dtype=np.int64)
        rows.append(np.asarray(run(inputs), dtype=np.float32))
        start += n
    return np.concatenate(rows)


def transformers_logits(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def check_against(ours: np.ndarray, ref: np.ndarray, wtype: str, what: str) -> None:
    err = np.abs(ours - ref).max()
    assert err < BOUND[wtype], f"{what}: max |logit diff| {err:.3g} over {BOUND[wtype]}"
    top2 = np.sort(ref, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > CLEAR_LEAD[wtype]
    assert clear.sum() >= len(ref) // 2, f"{what}: too few positions where the reference leads clearly"
    agree = ours.argmax(-1) == ref.argmax(-1)
    assert agree[clear].all(), f"{what}: top-1 differs at positions {np.flatnonzero(clear & ~agree)}"


@pytest.mark.parametrize("wtype", tiny_models.WTYPES)
@pytest.mark.parametrize("window", [6, 20], ids=["window-under-a-block", "window-across-blocks"])
def test_tiny_gemma3_gguf_matches_transformers(tmp_path, wtype, window):
    model = tiny_models.gemma3(seed=1, sliding_window=window)
    path = tiny_models.write_gguf(model, str(tmp_path / "gemma3.gguf"), tiny_models.GEMMA3, wtype)
    weights = load_gguf(path)
    cfg = weights.config
    assert (cfg.architecture, cfg.head_dim, cfg.num_heads * cfg.head_dim, cfg.hidden_size) == ("gemma3", 48, 96, 64)
    assert [la.window for la in weights.layer_attention] == [window] * 5 + [0, window]
    assert [la.rope_theta for la in weights.layer_attention] == [1e4] * 5 + [1e6, 1e4]
    assert cfg.query_scale == pytest.approx(48 ** -0.5)
    ref = transformers_logits(tiny_models.as_stored(model, wtype), IDS)
    runner = CpuModelRunner(weights, num_blocks=8, block_size=BLOCK, max_num_tokens=32)
    check_against(chunked_logits(runner.forward, IDS), ref, wtype, f"gemma3 {wtype} native")
    if wtype == tiny_models.F32:
        from cyserve.fastpath.model.torch_runner import TorchModelRunner

        torch_runner = TorchModelRunner(weights, 8, BLOCK, device="cpu")
        got = chunked_logits(lambda inputs: torch_runner.forward(inputs).numpy(), IDS)
        check_against(got, ref, wtype, "gemma3 F32 torch runner")


def test_tiny_gemma3_window_is_what_transformers_applies(tmp_path):
    """The same weights with a window as long as the sequence: transformers and we both move, so
    the window above is read, not matched by luck."""
    narrow, wide = tiny_models.gemma3(seed=1, sliding_window=6), tiny_models.gemma3(seed=1, sliding_window=64)
    assert np.abs(transformers_logits(narrow, IDS) - transformers_logits(wide, IDS)).max() > 1.0
    path = tiny_models.write_gguf(wide, str(tmp_path / "wide.gguf"), tiny_models.GEMMA3)
    runner = CpuModelRunner(load_gguf(path), num_blocks=8, block_size=BLOCK)
    check_against(chunked_logits(runner.forward, IDS), transformers_logits(wide, IDS), tiny_models.F32, "wide")


ARCHITECTURES = {  # name -> (tiny transformers model, its conversion)
    "llama": (tiny_models.llama, tiny_models.LLAMA),
    "llama3": (tiny_models.llama3, tiny_models.LLAMA3),
    "qwen2": (tiny_models.qwen2, tiny_models.QWEN2),
    "qwen3": (tiny_models.qwen3, tiny_models.QWEN3),
    "phi3": (tiny_models.phi3, tiny_models.PHI3),
}


@pytest.mark.parametrize("wtype", tiny_models.WTYPES)
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_tiny_gguf_matches_transformers(tmp_path, name, wtype):
    build, conversion = ARCHITECTURES[name]
    model = build(seed=2)
    path = tiny_models.write_gguf(model, str(tmp_path / f"{name}.gguf"), conversion, wtype)
    weights = load_gguf(path)
    assert weights.config.architecture == conversion.name
    assert (weights.rope_freqs is not None) == (name == "llama3")
    assert (weights.output is weights.token_embd) == bool(model.config.tie_word_embeddings)
    ref = transformers_logits(tiny_models.as_stored(model, wtype), IDS)
    runner = CpuModelRunner(weights, num_blocks=8, block_size=BLOCK, max_num_tokens=32)
    check_against(chunked_logits(runner.forward, IDS), ref, wtype, f"{name} {wtype} native")
    if wtype == tiny_models.F32:
        from cyserve.fastpath.model.torch_runner import TorchModelRunner

        torch_runner = TorchModelRunner(weights, 8, BLOCK, device="cpu")
        got = chunked_logits(lambda inputs: torch_runner.forward(inputs).numpy(), IDS)
        check_against(got, ref, wtype, f"{name} F32 torch runner")


def test_tiny_llama3_rope_factors_are_read(tmp_path):
    """The file's rope_freqs move the logits, and we follow them: the same weights without the
    tensor differ from transformers' llama3 forward."""
    model = tiny_models.llama3(seed=2)
    path = tiny_models.write_gguf(model, str(tmp_path / "llama3.gguf"), tiny_models.LLAMA3)
    weights = load_gguf(path)
    np.testing.assert_allclose(weights.rope_freqs, 1.0 / model.model.rotary_emb.inv_freq.numpy()
                               * 10000.0 ** (-np.arange(0, 16, 2) / 16), rtol=1e-5)
    without = dataclasses.replace(weights, rope_freqs=None)
    ref = transformers_logits(model, IDS)
    got = chunked_logits(CpuModelRunner(without, 8, BLOCK, max_num_tokens=32).forward, IDS)
    assert np.abs(got - ref).max() > 0.1
