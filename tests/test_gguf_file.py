"""Our GGUF header reader against gguf-py's GGUFReader: the same metadata values and the same
tensor bytes, on the real model files and on a file holding every metadata value type; bad bytes
give GGUFFormatError with a reason, never an IndexError or a crash."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from cyserve.fastpath.model.gguf_file import GGUFFile, GGUFFormatError


def _same_as_gguf_py(path: str, full_bytes: int = 4) -> None:
    ours, theirs = GGUFFile(path), GGUFReader(path, "r")
    their_keys = {k for k in theirs.fields if not k.startswith("GGUF.")}  # gguf-py's own header pseudo-keys
    assert set(ours.fields) == their_keys
    for key, field in ours.fields.items():
        if key != "t.nested":  # gguf-py flattens an array of arrays; we keep its structure
            assert field.contents() == theirs.fields[key].contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for i, (a, b) in enumerate(zip(ours.tensors, theirs.tensors)):
        assert a.tensor_type == b.tensor_type and a.shape == tuple(int(d) for d in b.shape), a.name
        assert a.n_elements == int(b.n_elements)
        raw = np.asarray(b.data).reshape(-1).view(np.uint8)
        assert a.data.nbytes == raw.nbytes, a.name
        if i < full_bytes:  # every byte of a few tensors; the ends of all (offsets and sizes line up)
            assert np.array_equal(a.data, raw), a.name
        else:
            assert np.array_equal(a.data[:32], raw[:32]) and np.array_equal(a.data[-32:], raw[-32:]), a.name


def test_default_model_reads_as_gguf_py_reads_it(model_path):
    _same_as_gguf_py(model_path)


def test_gemma_reads_as_gguf_py_reads_it(gemma_path):
    _same_as_gguf_py(gemma_path, full_bytes=2)


def _every_type_file(path, alignment: int | None = None) -> None:
    w = GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 250)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.15625)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ▁ 世界 🙂")
    w.add_string("t.empty", "")
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.strs", ["a", "", "▁b", "<0x0A>"])
    w.add_key_value("t.nested", [[1, 2], [3]], GGUFValueType.ARRAY, sub_type=GGUFValueType.ARRAY)
    rng = np.random.default_rng(0)
    w.add_tensor("a", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("b", rng.standard_normal((2, 64)).astype(np.float16))
    w.add_tensor("c", rng.integers(0, 255, (4, 34), dtype=np.uint8), raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("alignment", [None, 64])
def test_every_value_type_and_alignment(tmp_path, alignment):
    path = tmp_path / "types.gguf"
    _every_type_file(path, alignment)
    _same_as_gguf_py(str(path), full_bytes=3)
    f = GGUFFile(path)
    assert f.fields["t.str"].contents() == "héllo ▁ 世界 🙂"
    assert f.fields["t.u64"].contents() == 2**63 + 5 and f.fields["t.bool"].contents() is True
    assert f.fields["t.strs"].contents() == ["a", "", "▁b", "<0x0A>"]
    assert f.fields["t.nested"].contents() == [[1, 2], [3]]
    assert [t.shape for t in f.tensors] == [(5, 3), (64, 2), (32, 4)]


def test_not_gguf_and_bad_version(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(40))
    with pytest.raises(GGUFFormatError, match="magic"):
        GGUFFile(bad)
    bad.write_bytes(b"GGUF" + (7).to_bytes(4, "little") + bytes(40))
    with pytest.raises(GGUFFormatError, match="version 7"):
        GGUFFile(bad)
    bad.write_bytes(b"GGUF")
    with pytest.raises(GGUFFormatError, match="too short"):
        GGUFFile(bad)


def test_every_cut_is_a_format_error(tmp_path):
    """A file cut anywhere (in the header, in a string array, in the tensor data) is refused with
    a reason; nothing else is raised."""
    path = tmp_path / "types.gguf"
    _every_type_file(path)
    whole = path.read_bytes()
    data_end = max(t.offset + t.data.nbytes for t in GGUFFile(path).tensors)  # padding may follow
    cut = tmp_path / "cut.gguf"
    for keep in sorted({24, 30, 60, 100, 200, 300, 400, 500, data_end // 2, data_end - 1}):
        cut.write_bytes(whole[:keep])
        with pytest.raises(GGUFFormatError):
            GGUFFile(cut)
