"""Pre-tokenization for the byte-level BPE tokenizer: UTF-8 text -> pre-tokens (words).

Owns the pre-tokenizer names of `tokenizer.ggml.pre` and their kinds, the Unicode character-class
table and its loader, the hand-written UTF-8 scanners that reproduce each pre-tokenizer regex,
and `pretokenize()` for tests and debugging. cyserve.fastpath.tokenizer.tokenizer cimports `pre_kind_of`
and `next_word` (pretokenizer.pxd) and runs BPE on each pre-token. The table is filled once at
import; after that the scanners only read it, so they run without the GIL.

Pre-tokenizers (the llama.cpp / HF regexes they reproduce):
  gpt2, gpt-2, phi-2,  's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
  default
  smollm, starcoder,   every \\p{N} isolated first, then the gpt2 regex on the text between
  refact               (SmolLM2's tokenizer.json: Digits(individual_digits) + ByteLevel)
  llama-bpe, llama3,   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}
  llama-v3               | ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+
  qwen2,               as llama3 with \\p{N} instead of \\p{N}{1,3}
  deepseek-r1-qwen
transformers' GGUF loader does not know "smollm" and splits such files as gpt2; the two differ
only at 2+ whitespace chars before a number and at non-ASCII numerals. Tokenizer.from_gguf(reader,
pre="gpt2") reproduces transformers exactly.
Character classes (\\p{L}, \\p{N}, \\s) come from a table matching the Oniguruma engine of HF
`tokenizers` (Unicode 16.0), so results do not drift with the Python version's unicodedata.
"""
import base64
import zlib

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memset

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

cdef enum:
    # character classes of the scanner
    CLS_OTHER = 0
    CLS_LETTER = 1
    CLS_NUMBER = 2
    CLS_SPACE = 3
    # pre-tokenizer kinds
    PRE_GPT2 = 0
    PRE_DIGITS = 1           # gpt2 after isolating every \p{N}
    PRE_LLAMA3 = 2
    PRE_QWEN2 = 3

PRE_TOKENIZERS = {
    "gpt2": PRE_GPT2, "gpt-2": PRE_GPT2, "phi-2": PRE_GPT2, "default": PRE_GPT2,
    "smollm": PRE_DIGITS, "starcoder": PRE_DIGITS, "refact": PRE_DIGITS,
    "llama-bpe": PRE_LLAMA3, "llama3": PRE_LLAMA3, "llama-v3": PRE_LLAMA3,
    "qwen2": PRE_QWEN2, "deepseek-r1-qwen": PRE_QWEN2,
}


cdef int pre_kind_of(str pre) except -1:
    try:
        return PRE_TOKENIZERS[pre]
    except KeyError:
        raise ValueError(
            f"unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); supported: {sorted(PRE_TOKENIZERS)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Unicode class table: 0x110000 entries of CLS_*, from a run-length blob (see _load_classes)

cdef uint8_t _CLASS[0x110000]


cdef void _load_classes() except *:
    """Runs as varints ((start - previous start) << 2 | class), zlib level 9, base64. To
    regenerate: class 1 where `tokenizers.Regex(r"\\p{L}")` (Oniguruma) matches the code point,
    2 for \\p{N}, 3 for \\s, else 0; one varint per change of class. The test
    test_char_classes_match_oniguruma compares the table with that engine."""
    cdef bytes raw = zlib.decompress(base64.b64decode("".join(_CLASS_RUNS)))
    cdef const uint8_t* p = raw
    cdef Py_ssize_t i = 0, n = len(raw)
    cdef uint32_t start = 0, value, shift
    cdef uint8_t cls = CLS_OTHER
    while i < n:
        value = 0
        shift = 0
        while True:
            value |= <uint32_t>(p[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not (p[i - 1] & 0x80):
                break
        if start + (value >> 2) > 0x110000:
            raise ValueError("corrupt character class table")
        memset(&_CLASS[start], cls, value >> 2)            # the previous run ends here
        start += value >> 2
        cls = value & 3
    memset(&_CLASS[start], cls, 0x110000 - start)


cdef inline uint32_t _decode_cp(const uint8_t* s, Py_ssize_t i, int* width) noexcept nogil:
    """Code point at s[i] of valid UTF-8 (the text came from CPython's encoder)."""
    cdef uint8_t b = s[i]
    if b < 0x80:
        width[0] = 1
        return b
    if b < 0xE0:
        width[0] = 2
        return (<uint32_t>(b & 0x1F) << 6) | (s[i + 1] & 0x3F)
    if b < 0xF0:
        width[0] = 3
        return (<uint32_t>(b & 0x0F) << 12) | (<uint32_t>(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F)
    width[0] = 4
    return ((<uint32_t>(b & 0x07) << 18) | (<uint32_t>(s[i + 1] & 0x3F) << 12)
            | (<uint32_t>(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F))


cdef inline uint8_t _class_at(const uint8_t* s, Py_ssize_t i, int* width) noexcept nogil:
    return _CLASS[_decode_cp(s, i, width)]


cdef inline Py_ssize_t _run_of(const uint8_t* s, Py_ssize_t p, Py_ssize_t end, uint8_t cls) noexcept nogil:
    """End of the run of class `cls` starting at p."""
    cdef int w
    while p < end and _class_at(s, p, &w) == cls:
        p += w
    return p


cdef inline Py_ssize_t _space_run(const uint8_t* s, Py_ssize_t i, Py_ssize_t end) noexcept nogil:
    """\\s+(?!\\S)|\\s+ at i (a whitespace char): the run, less its last char when a non-space
    follows and the run is longer than one char."""
    cdef int w
    cdef Py_ssize_t p = i, last = i
    while p < end and _class_at(s, p, &w) == CLS_SPACE:
        last = p
        p += w
    if p == end or last == i:
        return p
    return last


cdef inline bint _is_contraction(const uint8_t* s, Py_ssize_t i, Py_ssize_t end, bint fold, Py_ssize_t* stop) noexcept nogil:
    """'s|'t|'re|'ve|'m|'ll|'d at s[i] == "'"; `fold` makes it case-insensitive."""
    cdef uint8_t c1, c2
    if i + 1 >= end:
        return False
    c1 = s[i + 1]
    if fold:
        if c1 == 0xC5 and i + 2 < end and s[i + 2] == 0xBF:   # U+017F LONG S folds to s
            stop[0] = i + 3
            return True
        c1 |= 0x20
    if c1 == ord("s") or c1 == ord("t") or c1 == ord("m") or c1 == ord("d"):
        stop[0] = i + 2
        return True
    if i + 2 >= end:
        return False
    c2 = (s[i + 2] | 0x20) if fold else s[i + 2]
    if ((c1 == ord("r") and c2 == ord("e")) or (c1 == ord("v") and c2 == ord("e"))
            or (c1 == ord("l") and c2 == ord("l"))):
        stop[0] = i + 3
        return True
    return False


cdef Py_ssize_t _next_gpt2(const uint8_t* s, Py_ssize_t i, Py_ssize_t end) noexcept nogil:
    cdef int w
    cdef Py_ssize_t j = i, stop
    cdef uint8_t cls
    if s[i] == 0x27 and _is_contraction(s, i, end, False, &stop):
        return stop
    if s[i] == 0x20 and i + 1 < end:
        j = i + 1
    cls = _class_at(s, j, &w)
    if cls != CLS_SPACE:                     # ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        return _run_of(s, j + w, end, cls)
    return _space_run(s, i, end)


cdef Py_ssize_t _next_llama3(const uint8_t* s, Py_ssize_t i, Py_ssize_t end, int max_digits) noexcept nogil:
    cdef int w0, w
    cdef Py_ssize_t p, stop, nl_end
    cdef uint32_t c0 = _decode_cp(s, i, &w0), c
    cdef uint8_t cls0 = _CLASS[c0]
    cdef int count
    if c0 == 0x27 and _is_contraction(s, i, end, True, &stop):
        return stop
    if cls0 == CLS_LETTER:                   # [^\r\n\p{L}\p{N}]?\p{L}+
        return _run_of(s, i + w0, end, CLS_LETTER)
    if cls0 != CLS_NUMBER and c0 != 0x0D and c0 != 0x0A and i + w0 < end:
        if _class_at(s, i + w0, &w) == CLS_LETTER:
            return _run_of(s, i + w0 + w, end, CLS_LETTER)
    if cls0 == CLS_NUMBER:                   # \p{N}{1,max_digits}
        p = i + w0
        count = 1
        while count < max_digits and p < end and _class_at(s, p, &w) == CLS_NUMBER:
            p += w
            count += 1
        return p
    p = i + 1 if (c0 == 0x20 and i + 1 < end) else i
    if _class_at(s, p, &w) == CLS_OTHER:     # ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        p = _run_of(s, p + w, end, CLS_OTHER)
        while p < end and (s[p] == 0x0D or s[p] == 0x0A):
            p += 1
        return p
    nl_end = -1                              # \s*[\r\n]+ : through the run's last newline
    p = i
    while p < end:
        c = _decode_cp(s, p, &w)
        if _CLASS[c] != CLS_SPACE:
            break
        p += w
        if c == 0x0D or c == 0x0A:
            nl_end = p
    if nl_end > 0:
        return nl_end
    return _space_run(s, i, end)


cdef Py_ssize_t next_word(const uint8_t* s, Py_ssize_t i, Py_ssize_t n, int kind, Py_ssize_t* seg_end) noexcept nogil:
    """End of the pre-token starting at byte i. `seg_end` caches the next \\p{N} for PRE_DIGITS."""
    cdef int w
    cdef Py_ssize_t p
    if kind == PRE_GPT2:
        return _next_gpt2(s, i, n)
    if kind == PRE_DIGITS:
        if _class_at(s, i, &w) == CLS_NUMBER:
            return i + w
        if seg_end[0] <= i:
            p = i
            while p < n and _class_at(s, p, &w) != CLS_NUMBER:
                p += w
            seg_end[0] = p
        return _next_gpt2(s, i, seg_end[0])
    return _next_llama3(s, i, n, 3 if kind == PRE_LLAMA3 else 1)


def pretokenize(str text, str pre="smollm"):
    """The pre-tokens of `text` (no special-token handling): for tests and debugging."""
    cdef int kind = pre_kind_of(pre)
    cdef Py_ssize_t n, i = 0, j, seg_end = 0
    cdef const uint8_t* s = <const uint8_t*>PyUnicode_AsUTF8AndSize(text, &n)
    words = []
    while i < n:
        j = next_word(s, i, n, kind, &seg_end)
        words.append(PyUnicode_DecodeUTF8(<const char*>s + i, j - i, "strict"))
        i = j
    return words


def _char_classes():
    """The class table as bytes (index = code point): 0 other, 1 \\p{L}, 2 \\p{N}, 3 \\s."""
    return PyBytes_FromStringAndSize(<const char*>_CLASS, 0x110000)


# ---------------------------------------------------------------------------------------------
# the class table's run-length blob (format and how to regenerate it: _load_classes)

_CLASS_RUNS = (
    "eNpVVWFoHNcR7ryd2ezb7F52z7vOnrg1e+6d8zaRXJ04GctIRjKRI7VykUPsKOEcbJCL0jogF8c5FyXoXBkssItcLCoZKaQg"
    "gwvXIocrdYIgEvEPB5xggwKySYJ/KOAEB/InoD+Fzp6cgnl3b+/NzZv5Zuab2V885/0G96pwJDPyAv4BC7jNIEwR6haVaYyu"
    "pdzWDi9EwnPokSEdwgySRUiDdFtQDXMzRDMgMbMA8+KE6/wbanBYuQZd0Ai7jNCMLYk9SJW310UL7oknoGC46A+57MrGI8Nh"
    "s3+Ugt5r8B2sgY39GKq0om43koYcoiyh7dh8v90gKx0bZiAxF7ibfxnJepcRbVPS6skzqk2pl5jpMtKqgC0/m2lIzyRGFOlB"
    "C1JgW+TYHCsZtmFbdutreLjUH1ESdreNbzJqySa2MwJ3U6oSE++ySzZh9CbuFiAJzbf00EoPUOD32UcpTyiz76neZSCjmN2h"
    "5iHx4dFR3vleAaVHuENJpwr43mAxoil4y/tcq8FBXWUCl4O1jdByS0Xk8wwQ+ihrQHWTHMlYeF8A3ibg/+dOWk8OF8SeQbu7"
    "Z03IwF7cIl+iEb8mUnYU9rUPdPR1lMjqugMXAV1MqSb1usqsi9CT5xMPMyIeex/iivRaFsEdaWqehnJhFf4FrNiOP4kl6I1S"
    "6ipU2s14Ed6cgj8qOxVPgWz2ayCtq+BQwGlEf1yvijVDBpIZEciI4SVrTK5Co5IWZW1HBm7J51/PNL9jPIufAO4jNAOfoy1N"
    "a4xOKtb0MptXHWqWju+5qH8Opnd/64/wsRi6v6Vy/ZeXn8pw+XagfJyjBxBiT7mQpSfWisBPU+ia+Lt86Jm24a6JjEUPBTmM"
    "nDZEyonHYQW6z4L6U6R38uN96Kya419AVdTrdFHcAFk37H2xcXAJesbkFcEFzcs5jdMtk8JGh7qZCA6VdwXxHei4xak5FthM"
    "Kj0ejcvHT4VLcJJD8+j52GO+HLEoSqtMmat8i3HbhvQkx3nMks2hVQw4aUEjBAa3O3Nb26UyU1+LYtm9CZfOixtPy2vaLGSL"
    "np9wqcSswkYTLGrnoPZ0/7iQa/B3aL2reTSHv230dMu6sBtmpXURWmmEBli/U+6ehEdaWx3a1mG/cfepU/ZN2HfCPQtO4WXa"
    "zoRIyDAFbqR7/4ANNBkGuPz5AHJ3oNhMnY2Oevy0WfSVLAzF0bGArgHlpwV3KS1CQglZNnNlMxzbnl8Bdr3Vfz1wR2bFA0hL"
    "s9v8CLDL4fydej5/5LRBp60qRDTa5PWsQTxk5ga25vre4BouiK/hNrTfhm2Mo001xaOF8vc6DyfIGD3WD3A6xtzQTuetvo/g"
    "cPZgubgKv6/wrML2OlRheJsqTMFexczC3AUeMcVl6HB2xpz29GBLHw0fMP4LjU7icBTXa796cmr0Y9E7w6TkmBKuHeeL12EV"
    "+p2tyrfOLMNB5sF2NUtLwI1wCViAO9Usj8F2HkxNgydPHG51s99yPu5qZ8VAMeLBErHlo11saI+aFZGcAx6QeBLjD5jEh7Dl"
    "BhzA/gUxr08w7kyeLkMv7j3lV1a0BNIMHOIBkuGOo3HoYB/35ADbKtF5Jt89gXtf+Sc8zF7RlrTeKf36yxNa13KuNzj+aMyf"
    "S3/7JVR+rWZ3rbvhGNNySfBW6V+GHqdN6Vl6xR9YseuQUrP6WVG+qtWEj5OiVBUc4skHn0BubcdVUPN/E04jORdkF77Ng7LD"
    "yS1al/pqml+y86G6z210Zedg2+CH2vA8rgqaE0k1ZPL2aOVEZ2mCG5CTkKVRzjqz2M7SHVMO0zC/cZ78RuYtqO4eywTTxgZ8"
    "hnWIsyaX8pxZ6V+EtLqXGuVNr0hdTT+TZWNMbrqsm8y2KRFiWn0TPALd0p0PRR30zkndoROsk9RSsTYmbzN3c9RYj+U/r+SU"
    "hOk09BS9yEPLoxf/mi795VU1G43/x6zCwypkNnR5vg4dN7+DrhtbJg9sOJO/ql0Bf/zP8D8ebF3d"
)
_load_classes()
