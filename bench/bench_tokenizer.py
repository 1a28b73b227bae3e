"""Tokenizer speed: encode and decode of a few KB of mixed text (prose, code, digits, CJK, emoji,
whitespace runs) with the tokenizer of a GGUF file, and, beside it, Hugging Face `tokenizers` on
the same file when transformers is installed (its GGUF load is slow for large vocabularies).

    python bench/bench_tokenizer.py [--model PATH] [--repeat 300] [--no-hf]

Printed per system: the best of 5 rounds, in microseconds per call and MB/s of UTF-8 text.
To compare two builds of cyserve, run this once with each on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import os
import time

TEXT = "\n".join([
    "The quick brown fox jumps over the lazy dog. It's 3.14159 and 2,718,281,828; isn't it?",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n    pass\n",
    "int main(void) {\n\tfor (int i = 0; i < 10; ++i) printf(\"%d\\n\", i);\n\treturn 0;\n}",
    "Café naïve résumé façade Ærøskøbing Straße — «guillemets» „quotes“ … ellipsis",
    "日本語のテキスト、漢字とかな。中文测试，你好世界！한국어 텍스트 مرحبا بالعالم",
    "👨‍👩‍👧‍👦 family, 👍🏽 thumbs, 🏳️‍🌈 flag    lots   of    spaces\t\ttabs\r\n",
    "email@example.com https://example.com/path?q=1&r=2#frag year 2024 id 000123456789",
]) * 4


def best_of(fn, repeat: int, rounds: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def report(name: str, seconds: float, num_bytes: int) -> None:
    print(f"  {name:<28} {seconds * 1e6:9.1f} us   {num_bytes / seconds / 1e6:7.1f} MB/s")


def main() -> None:
    from cyserve.fastpath.model.gguf_file import GGUFFile
    from cyserve.fastpath.tokenizer import Tokenizer
    from cyserve.service.config import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face tokenizer")
    args = parser.parse_args()

    t0 = time.perf_counter()
    tok = Tokenizer.from_gguf(GGUFFile(args.model))
    load_s = time.perf_counter() - t0
    n = len(TEXT.encode())
    ids = tok.encode(TEXT)
    print(f"{os.path.basename(args.model)}: {tok!r}, loaded in {load_s:.2f} s; {n} bytes -> {len(ids)} ids")
    report("cyserve encode", best_of(lambda: tok.encode(TEXT), args.repeat), n)
    report("cyserve decode", best_of(lambda: tok.decode(ids), args.repeat), n)
    if args.no_hf:
        return
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return
    ref = AutoTokenizer.from_pretrained(os.path.dirname(args.model), gguf_file=os.path.basename(args.model))
    backend = ref.backend_tokenizer
    assert backend.encode(TEXT, add_special_tokens=False).ids == ids or tok.pre == "smollm", "ids differ"
    report("tokenizers encode", best_of(lambda: backend.encode(TEXT, add_special_tokens=False), args.repeat), n)
    report("tokenizers decode", best_of(lambda: backend.decode(ids, skip_special_tokens=False), args.repeat), n)


if __name__ == "__main__":
    main()
