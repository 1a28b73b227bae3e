"""Hugging Face model directories: tiny random-weight checkpoints saved by transformers (sharded
and not, F32 and BF16) against transformers' own forward; quantize-on-load against the reference
quantizers; the tokenizer from tokenizer.json against the `tokenizers` library; and every broken
directory refused with a ModelLoadError naming the file."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cyserve.fastpath.errors import ModelLoadError
from cyserve.fastpath.loading import load_model
from cyserve.fastpath.model.batch import build_inputs
from cyserve.fastpath.model.cpu_runner import CpuModelRunner
from cyserve.fastpath.model.hf_checkpoint import load_hf_checkpoint
from cyserve.fastpath.model.weights import WeightType
from cyserve.kernels import reference_quants

BLOCK = 16
IDS = [3, 17, 42, 5, 88, 1, 63, 29, 7, 70, 11, 54, 90, 2, 36, 81, 19, 44, 60, 8, 33, 77, 14, 50]


def tiny_llama(directory, dtype=torch.float32, shard: str | None = None, seed: int = 3,
               hidden: int = 64, intermediate: int = 128) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():  # norms away from 1, so a misread norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(directory, **kwargs)
    return model


def our_logits(model_weights, ids: list[int]) -> np.ndarray:
    runner = CpuModelRunner(model_weights, num_blocks=8, block_size=BLOCK)
    blocks = list(range((len(ids) + BLOCK - 1) // BLOCK))
    inputs = build_inputs([(ids, 0, len(ids), blocks, True)], BLOCK)
    inputs.logits_indices = np.arange(len(ids), dtype=np.int64)
    return runner.forward(inputs)


def reference_logits(directory, ids: list[int]) -> np.ndarray:
    ref = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()  # bf16 upcast exactly
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("dtype,shard", [(torch.float32, None), (torch.float32, "200KB"),
                                         (torch.bfloat16, None), (torch.bfloat16, "100KB")],
                         ids=["f32", "f32-sharded", "bf16", "bf16-sharded"])
def test_tiny_llama_matches_transformers(tmp_path, dtype, shard):
    tiny_llama(tmp_path, dtype, shard)
    assert os.path.isfile(tmp_path / "model.safetensors.index.json") == (shard is not None)
    weights = load_hf_checkpoint(str(tmp_path))
    assert weights.config.file_type == ("F32" if dtype == torch.float32 else "BF16")
    ours, ref = our_logits(weights, IDS), reference_logits(tmp_path, IDS)
    # f32 accumulation throughout; int8 activations are not used for float weights, so the bound
    # is the fp16 KV cache's rounding
    np.testing.assert_allclose(ours, ref, atol=2e-2, rtol=0)
    clear = np.sort(ref, -1)[:, -1] - np.sort(ref, -1)[:, -2] > 0.05
    assert (ours.argmax(-1) == ref.argmax(-1))[clear].all()


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_quantize_on_load_is_the_reference_quantizer(tmp_path, name):
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as gguf_quantize

    tiny_llama(tmp_path)
    plain, quantized = load_hf_checkpoint(str(tmp_path)), load_hf_checkpoint(str(tmp_path), name)
    wtype = WeightType[name.upper()]
    assert quantized.config.file_type == name.upper()
    assert dict(quantized.config.tensor_types)[name.upper()] == 2 * 7 + 2  # 7 matrices a layer, embd, head
    for a, b in [(plain.layers[1].w_down, quantized.layers[1].w_down), (plain.token_embd, quantized.token_embd)]:
        assert b.wtype == wtype
        f32 = a.data.view(np.float32).reshape(a.rows, a.cols)
        assert np.array_equal(b.data, reference_quants.quantize(f32, int(wtype)))
        theirs = gguf_quantize(f32, GGMLQuantizationType[name.upper()])  # an independent quantizer
        assert np.array_equal(b.data, theirs.reshape(b.data.shape))
    ours, ref = our_logits(quantized, IDS), reference_logits(tmp_path, IDS)
    assert np.abs(ours - ref).max() < (0.1 if name == "q8_0" else 0.5)


def test_quantize_q4_k_on_load(tmp_path):
    """K-quants need rows of whole 256-element super-blocks: a tiny model 256 wide. gguf has no
    Q4_K quantizer, so the bytes are checked against ours and the decode against gguf's."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    tiny_llama(tmp_path, hidden=256, intermediate=512)
    plain, quantized = load_hf_checkpoint(str(tmp_path)), load_hf_checkpoint(str(tmp_path), "q4_k")
    assert quantized.config.file_type == "Q4_K"
    assert dict(quantized.config.tensor_types)["Q4_K"] == 2 * 7 + 2
    for a, b in [(plain.layers[0].w_down, quantized.layers[0].w_down), (plain.token_embd, quantized.token_embd),
                 (plain.layers[1].wq, quantized.layers[1].wq)]:
        assert b.wtype == WeightType.Q4_K and b.data.shape == (a.rows, a.cols // 256 * 144)
        f32 = a.data.view(np.float32).reshape(a.rows, a.cols)
        assert np.array_equal(b.data, reference_quants.quantize(f32, int(WeightType.Q4_K)))
        back = gguf_dequantize(b.data, GGMLQuantizationType.Q4_K).reshape(a.rows, a.cols)
        assert np.sqrt(((back - f32) ** 2).mean() / (f32 ** 2).mean()) < 0.1
    ours, ref = our_logits(quantized, IDS), reference_logits(tmp_path, IDS)
    assert np.abs(ours - ref).max() < 0.5


def test_quantize_q4_k_refuses_rows_off_the_super_block(tmp_path):
    tiny_llama(tmp_path)  # 64 wide
    with pytest.raises(ModelLoadError, match="Q4_K"):
        load_hf_checkpoint(str(tmp_path), "q4_k")


def test_tokenizer_json_matches_tokenizers(smollm2_hf_dir):
    from tokenizers import Tokenizer as HFTokenizer

    _, ours = load_model(smollm2_hf_dir)
    theirs = HFTokenizer.from_file(os.path.join(smollm2_hf_dir, "tokenizer.json"))
    corpus = ["Hello world", "  multiple   spaces\t\ttabs\n\n\nnewlines  ", "1234567 digits 3.14159 and 42x",
              "def f(x):\n    return x ** 2  # code\n", "Café naïve résumé Ångström", "日本語のテキスト 中文 한국어",
              "emoji 🙂👍🏽 family 👨‍👩‍👧", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
              "text<|endoftext|>more", "", " ", "\n", "don't I'll we've", "a" * 300]
    for text in corpus:
        assert ours.encode(text) == theirs.encode(text).ids, text
        assert ours.decode(theirs.encode(text).ids) == theirs.decode(theirs.encode(text).ids, skip_special_tokens=False)


def test_directory_metadata(smollm2_hf_dir):
    model, tokenizer = load_model(smollm2_hf_dir)
    assert model.config.architecture == "llama" and model.config.num_layers == 30
    assert "<|im_start|>" in model.chat_template
    generation = json.load(open(os.path.join(smollm2_hf_dir, "generation_config.json")))
    assert generation["eos_token_id"] in model.end_token_ids
    assert tokenizer.eos_token_id == generation["eos_token_id"]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tiny_llama(d, shard="200KB")
    return d


def _edit_json(path, **changes):
    data = json.load(open(path))
    data.update(changes)
    json.dump(data, open(path, "w"))


def test_broken_directories_name_the_file_and_the_fix(tmp_path, tiny_dir):
    def refused(directory, *fragments):
        with pytest.raises(ModelLoadError) as info:
            load_hf_checkpoint(str(directory))
        for f in fragments:
            assert f in str(info.value), str(info.value)

    d = _copy(tiny_dir, tmp_path / "no-config")
    os.remove(d / "config.json")
    refused(d, "config.json", "missing")

    d = _copy(tiny_dir, tmp_path / "unknown-type")
    _edit_json(d / "config.json", model_type="mamba")
    refused(d, "config.json", "'mamba'", "llama")

    d = _copy(tiny_dir, tmp_path / "missing-shard")
    shard = sorted(p for p in os.listdir(d) if p.endswith(".safetensors"))[-1]
    os.remove(d / shard)
    refused(d, shard, "missing", "model.safetensors.index.json")

    d = _copy(tiny_dir, tmp_path / "wrong-shape")
    _edit_json(d / "config.json", intermediate_size=96)
    refused(d, "mlp.gate_proj.weight", "[128, 64]", "[96, 64]")

    d = tmp_path / "no-weights"
    d.mkdir()
    shutil.copy(tiny_dir / "config.json", d / "config.json")
    refused(d, "no model.safetensors")


def test_unservable_dtype_names_the_tensor(tmp_path):
    from safetensors.numpy import save_file

    tiny_llama(tmp_path)
    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"].astype(np.float64)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"q_proj.weight' is F64"):
        load_hf_checkpoint(str(tmp_path))


def test_quantize_applies_to_directories_only(model_path):
    with pytest.raises(ModelLoadError, match="--quantize q8_0 applies to safetensors directories"):
        load_model(model_path, "q8_0")
