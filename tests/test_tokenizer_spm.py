"""SentencePiece vocabularies (tokenizer.ggml.model = llama): Gemma 3's file against transformers'
tokenizer of the same file, and small hand-made vocabularies for the rules Gemma does not use
(the leading "▁" of Llama 2 / Mistral, merges ranked by score, unknown chars without byte tokens).
"""
from __future__ import annotations

import pytest

from cyserve.fastpath.model.gguf_file import GGUFFile
from cyserve.fastpath.tokenizer import IncrementalDecoder, Tokenizer
from cyserve.fastpath.tokenizer.spm import SpmModel
from cyserve.fastpath.tokenizer.tokenizer import (
    TOKEN_TYPE_BYTE,
    TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_UNKNOWN,
    TOKEN_TYPE_USER_DEFINED,
)
from tests.test_tokenizer import CORPUS

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

GEMMA_SPECIALS = ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "<unk>", "[multimodal]",
                  "<unused0>", "<mask>"]
GEMMA_CORPUS = CORPUS + [
    "<start_of_turn>user\nWrite a haiku.<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nhi<end_of_turn>", "text<eos>more", "<pad><pad>x", "a<unk>b", "[multimodal] image",
    " hello", "  hello", "hello  world", "   ", "\u2581x", "a\u2581b", "\u2581\u2581 \u2581",  # "▁" written in text
    "\n\n\n\n", "x\n\n\ny", "\t\t\tz", "a" * 300, " " * 40 + "b", "1234567890" * 5,
    "Deseret \U00010437 and \U0001FAE8 by bytes",                     # chars without a token
]
BYTE_IDS = range(238, 238 + 256)                                        # <0x00>..<0xFF> in Gemma 3


@pytest.fixture(scope="module")
def gemma(gemma_path) -> Tokenizer:
    return Tokenizer.from_gguf(GGUFFile(gemma_path))


def hf_ids(ref, text: str, special: bool = False) -> list[int]:
    return ref(text, add_special_tokens=special).input_ids


# -- Gemma 3 against transformers ------------------------------------------------------------------

def test_gemma_metadata(gemma):
    assert gemma.model == "llama" and gemma.vocab_size == 262144
    assert (gemma.bos_token_id, gemma.eos_token_id, gemma.unknown_token_id, gemma.padding_token_id) == (2, 1, 3, 0)
    assert gemma.add_bos_token and not gemma.add_eos_token
    assert gemma.eog_token_ids == {1, gemma.token_to_id("<end_of_turn>")} == {1, 106}
    assert [gemma.is_special(i) for i in (0, 1, 2, 3, 106, 5, 107, 238, 9259)] == [True] * 5 + [False] * 4
    assert [gemma.id_to_piece(i) for i in (238, 255, 493)] == ["<0x00>", "<0x11>", "<0xFF>"]


@pytest.mark.oracle
@pytest.mark.parametrize("text", GEMMA_CORPUS)
def test_gemma_encode_matches_transformers(gemma, gemma_hf_tokenizer, text):
    ids = gemma.encode(text)
    assert ids == hf_ids(gemma_hf_tokenizer, text)
    if not text.startswith("<bos>"):
        assert gemma.encode(text, add_special=True) == hf_ids(gemma_hf_tokenizer, text, special=True)
    assert gemma.decode(ids) == gemma_hf_tokenizer.decode(ids)
    assert gemma.decode(ids, skip_special=True) == gemma_hf_tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.oracle
def test_gemma_byte_fallback(gemma, gemma_hf_tokenizer):
    text = "\U00010437"                         # DESERET SMALL LETTER YEE: no token, four byte tokens
    assert gemma.encode(text) == hf_ids(gemma_hf_tokenizer, text) == [478, 382, 382, 421]
    assert all(i in BYTE_IDS for i in gemma.encode(text))
    assert gemma.decode(gemma.encode(text)) == text


def test_gemma_bos_once(gemma):
    """A prompt starts with one <bos>: added when missing, not again when the text (a chat template)
    wrote it. (transformers adds a second one there; llama.cpp warns about that double BOS.)"""
    hi = gemma.token_to_id("hi")
    assert gemma.encode("hi", add_special=True) == [2, hi]
    assert gemma.encode("<bos>hi", add_special=True) == [2, hi] == gemma.with_bos(gemma.encode("<bos>hi"))
    assert gemma.with_bos([]) == [2] and gemma.with_bos((2, hi)) == [2, hi]
    as_text = gemma.encode("<bos>hi", parse_special=False, add_special=True)
    assert as_text[0] == 2 and gemma.id_to_piece(as_text[1]).startswith("<")


_gemma_pieces = st.sampled_from([
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u2581", "0", "42", "1234567", "the", " the",
    "Hello", "ÉTÉ", "é", "e\u0301", "日本", "中文", "مرحبا", "👍🏽", "👨‍👩‍👧", "\u200d", "\ufe0f", "\U00010437",
    "!", "...", "(", "{", "}", "->", "==", "\\", "\x00", "\x1c", "\u2028", "²", "<", ">", "<b", "os>",
])
_gemma_texts = st.one_of(
    st.text(max_size=60),
    st.lists(st.one_of(_gemma_pieces, st.sampled_from(GEMMA_SPECIALS), st.text(max_size=4)),
             max_size=25).map("".join),
)


@pytest.mark.oracle
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_gemma_texts)
def test_gemma_encode_property(gemma, gemma_hf_tokenizer, text):
    ids = gemma.encode(text)
    assert ids == hf_ids(gemma_hf_tokenizer, text)
    assert gemma.decode(ids) == text.replace("\u2581", " ")    # byte fallback loses nothing


@pytest.mark.oracle
@pytest.mark.parametrize("text", [t for t in GEMMA_CORPUS if "<" in t])
def test_gemma_parse_special_false(gemma, gemma_hf_tokenizer, text):
    backend = gemma_hf_tokenizer.backend_tokenizer
    backend.encode_special_tokens = True
    try:
        expected = backend.encode(text, add_special_tokens=False).ids
    finally:
        backend.encode_special_tokens = False
    assert gemma.encode(text, parse_special=False) == expected
    assert gemma.decode(expected) == text.replace("\u2581", " ")


@pytest.mark.oracle
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 262143).filter(lambda i: i not in BYTE_IDS), max_size=30))
def test_gemma_decode_arbitrary_ids(gemma, gemma_hf_tokenizer, ids):
    assert gemma.decode(ids) == gemma_hf_tokenizer.decode(ids)


def _stream(tok, ids, **options) -> list[str]:
    decoder = IncrementalDecoder(tok, **options)
    chunks = [decoder.push(i) for i in ids]
    chunks.append(decoder.flush())
    return chunks


@pytest.mark.parametrize("text", GEMMA_CORPUS)
def test_gemma_incremental_decode(gemma, text):
    ids = gemma.encode(text)
    chunks = _stream(gemma, ids)
    assert "".join(chunks) == gemma.decode(ids) == text.replace("\u2581", " ")   # "▁" reads as a space
    for chunk in chunks:
        assert "\ufffd" not in chunk
        chunk.encode("utf-8")                   # no lone surrogates
    assert "".join(_stream(gemma, ids, skip_special=True)) == gemma.decode(ids, skip_special=True)


def test_gemma_incremental_decode_assembles_byte_pieces(gemma):
    ids = gemma.encode("a\U00010437b")
    chunks = _stream(gemma, ids)
    assert len(ids) == 6 and chunks == ["a", "", "", "", "\U00010437", "b", ""]
    decoder = IncrementalDecoder(gemma)
    assert decoder.push(478) == "" and decoder.flush() == "\ufffd"   # a lone lead byte


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 262143), st.sampled_from(BYTE_IDS)), max_size=30))
def test_gemma_incremental_decode_arbitrary_ids(gemma, ids):
    assert "".join(_stream(gemma, ids)) == gemma.decode(ids)


# -- small vocabularies: the rules Gemma's file does not exercise ------------------------------

def _vocab(pieces: list[tuple[str, float, int]], **kwargs) -> Tokenizer:
    """A SentencePiece tokenizer of (piece, score, type) rows, with the 256 byte tokens after them."""
    rows = pieces + [(f"<0x{b:02X}>", 0.0, TOKEN_TYPE_BYTE) for b in range(256)]
    return Tokenizer([p for p, _, _ in rows], None, [t for _, _, t in rows], model="llama",
                     scores=[s for _, s, _ in rows], **kwargs)


N, C = TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL
LLAMA_LIKE = [("<unk>", 0.0, TOKEN_TYPE_UNKNOWN), ("<s>", 0.0, C), ("</s>", 0.0, C),
              ("\u2581", -1.0, N), ("a", -2.0, N), ("b", -2.0, N), ("c", -2.0, N), ("h", -2.0, N),
              ("i", -2.0, N), ("ab", -3.0, N), ("bc", -1.5, N), ("\u2581a", -1.2, N), ("\u2581h", -4.0, N),
              ("hi", -0.5, N), ("\u2581hi", -0.7, N), ("abc", -5.0, N), ("<x>", 0.0, TOKEN_TYPE_USER_DEFINED)]


@pytest.fixture(scope="module")
def llama_like() -> Tokenizer:
    return _vocab(LLAMA_LIKE, bos_token_id=1, eos_token_id=2, unknown_token_id=0, add_bos_token=True,
                  space_prefix="first")


def _pieces(tok, ids):
    return [tok.id_to_piece(i) for i in ids]


def test_merges_follow_scores(llama_like):
    # "▁abc": "bc" (-1.5) and "▁a" (-1.2) outrank "ab" (-3); "▁a" + "bc" is no token, so it stays
    assert _pieces(llama_like, llama_like.encode("abc")) == ["\u2581a", "bc"]
    assert _pieces(llama_like, llama_like.encode("hi")) == ["\u2581hi"]
    assert _pieces(llama_like, llama_like.encode("hi hi")) == ["\u2581hi", "\u2581hi"]
    assert _pieces(llama_like, llama_like.encode(" hi")) == ["\u2581hi"]          # no second "▁"
    assert _pieces(llama_like, llama_like.encode("ab")) == ["\u2581a", "b"]


def test_space_prefix_rules(llama_like):
    assert _pieces(llama_like, llama_like.encode("hi</s>hi")) == ["\u2581hi", "</s>", "hi"]
    every = _vocab(LLAMA_LIKE, space_prefix="every", unknown_token_id=0)
    assert _pieces(every, every.encode("hi</s>hi")) == ["\u2581hi", "</s>", "\u2581hi"]
    none = _vocab(LLAMA_LIKE, space_prefix="none", unknown_token_id=0)
    assert _pieces(none, none.encode("hi hi")) == ["hi", "\u2581hi"]
    assert llama_like.encode("") == [] and llama_like.encode("", add_special=True) == [1]


def test_decode_drops_the_prefix_space(llama_like):
    ids = llama_like.encode("hi abc")
    assert llama_like.decode(ids) == "hi abc"
    assert "".join(_stream(llama_like, ids, at_start=True)) == "hi abc"
    # generated tokens continue a prompt: their first "▁" is a real space
    assert "".join(_stream(llama_like, ids)) == " hi abc"
    assert llama_like.decode([1, *ids]) == "<s> hi abc"
    assert llama_like.decode([1, *ids], skip_special=True) == "hi abc"


def test_byte_fallback_and_unknown(llama_like):
    ids = llama_like.encode("hé")
    assert _pieces(llama_like, ids) == ["\u2581h", "<0xC3>", "<0xA9>"]
    assert llama_like.decode(ids) == "hé"
    assert "".join(_stream(llama_like, ids, at_start=True)) == "hé"
    no_bytes = Tokenizer([p for p, _, _ in LLAMA_LIKE], None, [t for _, _, t in LLAMA_LIKE], model="llama",
                         scores=[s for _, s, _ in LLAMA_LIKE], unknown_token_id=0, space_prefix="first")
    assert _pieces(no_bytes, no_bytes.encode("hé")) == ["\u2581h", "<unk>", "<unk>"]


def test_user_defined_and_control_tokens(llama_like):
    assert _pieces(llama_like, llama_like.encode("a<x>b")) == ["\u2581a", "<x>", "b"]
    assert _pieces(llama_like, llama_like.encode("<s>hi", parse_special=False))[:2] == ["\u2581", "<0x3C>"]
    assert llama_like.encode("<s>hi", add_special=True) == [1, llama_like.token_to_id("hi")]


def test_eog_ids_from_names_and_given():
    tok = _vocab(LLAMA_LIKE + [("<|im_end|>", 0.0, C), ("<end_of_turn>", 0.0, C)], eos_token_id=2)
    assert tok.eog_token_ids == {2, 17, 18}
    tok = _vocab(LLAMA_LIKE, eos_token_id=2, eog_token_ids=[2, 1])
    assert tok.eog_token_ids == {1, 2}


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs tokenizer.ggml.scores"):
        Tokenizer(["a"], None, [1], model="llama")
    with pytest.raises(ValueError, match="unsupported tokenizer model 'bert'; supported: gpt2, llama"):
        Tokenizer(["a"], None, [1], model="bert")
    with pytest.raises(ValueError, match="space_prefix 'sometimes'"):
        Tokenizer(["a"], None, [1], model="llama", scores=[0.0], space_prefix="sometimes")
    with pytest.raises(ValueError, match="1 ranks and 256 byte ids for 2 pieces"):
        SpmModel(["a", "b"], [0], [-1] * 256)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abchi é\u2581<x>", max_size=40))
def test_small_vocabulary_round_trip(llama_like, text):
    """Decoding gives the text back with "▁" as a space, less the one leading space the prefix
    rule drops (a text that starts with a space loses it, as Hugging Face's decode does)."""
    ids = llama_like.encode(text)
    spaced = text.replace("\u2581", " ")
    assert llama_like.decode(ids) == (spaced[1:] if spaced.startswith(" ") else spaced)
    assert "".join(_stream(llama_like, ids, at_start=True)) == llama_like.decode(ids)
