"""A model file cyserve cannot serve fails at startup with a message naming the file and the problem."""
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

from cyserve.fastpath.errors import ModelLoadError
from cyserve.fastpath.model.gguf_loader import WeightType, load_gguf


def write_tiny_llama(path, arch="llama", ffn_type=None, hidden=64, layers=2, vocab=96):
    """A random llama-shaped GGUF: small enough to build in a test, real enough to load."""
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(2 * hidden)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", f(vocab, hidden))
    w.add_tensor("output_norm.weight", f(hidden))
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", f(hidden))
        w.add_tensor(p + "ffn_norm.weight", f(hidden))
        for name, rows, cols in [("attn_q", hidden, hidden), ("attn_k", hidden // 2, hidden),
                                 ("attn_v", hidden // 2, hidden), ("attn_output", hidden, hidden),
                                 ("ffn_up", 2 * hidden, hidden), ("ffn_down", hidden, 2 * hidden)]:
            w.add_tensor(p + name + ".weight", f(rows, cols))
        if ffn_type is None:
            w.add_tensor(p + "ffn_gate.weight", f(2 * hidden, hidden))
        else:  # raw bytes of a type we do not read: [rows, row_bytes]
            block, size = GGML_QUANT_SIZES[ffn_type]
            raw = rng.integers(0, 255, (2 * hidden, hidden // block * size or size), dtype=np.uint8)
            w.add_tensor(p + "ffn_gate.weight", raw, raw_dtype=ffn_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def test_loads_a_llama_gguf_in_place(tmp_path):
    m = load_gguf(write_tiny_llama(tmp_path / "tiny.gguf"))
    assert m.config.num_layers == 2 and m.config.num_kv_heads == 2 and m.config.head_dim == 16
    assert m.layers[0].wk.wtype == WeightType.F32 and m.layers[0].wk.data.shape == (32, 64 * 4)
    assert isinstance(m.layers[0].wq.data.base, np.memmap) or not m.layers[0].wq.data.flags.owndata


def test_default_model_is_served_from_its_quantized_bytes(gguf_model):
    cfg = gguf_model.config
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == ("llama", 30, 576, 9, 3)
    assert gguf_model.layers[0].wq.wtype == WeightType.Q4_1
    assert gguf_model.output is gguf_model.token_embd, "SmolLM2 ties the output projection to the embeddings"


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file") as e:
        load_gguf(tmp_path / "nope.gguf")
    assert "nope.gguf" in str(e.value)


def test_not_a_gguf(tmp_path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"definitely not a model" * 100)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_gguf(p)


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_file(tmp_path, model_path, keep):
    data = open(model_path, "rb").read()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match="truncated or corrupt") as e:
        load_gguf(p)
    assert "cut.gguf" in str(e.value)


def test_other_architecture(tmp_path):
    with pytest.raises(ModelLoadError, match="architecture 'gpt2' is not supported"):
        load_gguf(write_tiny_llama(tmp_path / "gpt2.gguf", arch="gpt2"))


@pytest.mark.parametrize("ffn_type", ["Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_quantized_tensor_types_load_in_place(tmp_path, ffn_type):
    qtype = GGMLQuantizationType[ffn_type]
    m = load_gguf(write_tiny_llama(tmp_path / "q.gguf", hidden=256, ffn_type=qtype))
    gate = m.layers[1].w_gate
    block, size = GGML_QUANT_SIZES[qtype]
    assert gate.wtype == WeightType[ffn_type] and (gate.rows, gate.cols) == (512, 256)
    assert gate.data.shape == (512, 256 // block * size) and not gate.data.flags.owndata


def test_unsupported_tensor_type(tmp_path):
    path = write_tiny_llama(tmp_path / "iq4nl.gguf", hidden=256, ffn_type=GGMLQuantizationType.IQ4_NL)
    with pytest.raises(ModelLoadError, match=r"blk\.0\.ffn_gate\.weight.*IQ4_NL"):
        load_gguf(path)
