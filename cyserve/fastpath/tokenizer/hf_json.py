"""Our tokenizer from a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`).

The file's byte-level BPE (vocabulary, merges, added tokens) is the same data a GGUF vocabulary
holds, so it becomes the same `Tokenizer`; the pre-tokenizer is recognised from its
configuration and mapped to the one of ours that splits identically (a configuration we do not
know is refused, never approximated). BOS comes from the post-processor's template or
`add_bos_token`.
"""
from __future__ import annotations

import json
import os
from typing import Any

from cyserve.fastpath.tokenizer.tokenizer import (
    TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_USER_DEFINED,
    Tokenizer,
)

# Split regexes of the pre-tokenizers we implement, as tokenizer.json spells them
_SPLIT_REGEXES: dict[str, str] = {
    "llama-bpe": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    "qwen2": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    "gpt2": "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
}


class TokenizerJsonError(ValueError):
    """tokenizer.json describes something our tokenizer does not implement (the message says what)."""


def _byte_level(step: dict) -> bool:
    return step.get("type") == "ByteLevel"


def pre_tokenizer_name(pre: dict | None) -> str:
    """Our pre-tokenizer that splits as the tokenizer.json `pre_tokenizer` does."""
    if pre is None:
        raise TokenizerJsonError("no pre_tokenizer: only byte-level BPE vocabularies are supported")
    if _byte_level(pre):
        if pre.get("add_prefix_space"):
            raise TokenizerJsonError("ByteLevel with add_prefix_space is not supported")
        if pre.get("use_regex", True):
            return "gpt2"
        raise TokenizerJsonError("ByteLevel without its regex and without a Split is not supported")
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or not _byte_level(steps[-1]) or steps[-1].get("add_prefix_space"):
        raise TokenizerJsonError(f"pre_tokenizer {json.dumps(pre)[:200]} is not supported "
                                 "(byte-level BPE with a GPT-2, Llama 3, Qwen 2 or digit-splitting pre-tokenizer is)")
    first = steps[0]
    if len(steps) == 2 and first.get("type") == "Digits" and first.get("individual_digits") \
            and steps[1].get("use_regex", True):
        return "smollm"
    if len(steps) == 2 and first.get("type") == "Split" and not steps[1].get("use_regex", True):
        regex = (first.get("pattern") or {}).get("Regex")
        for name, known in _SPLIT_REGEXES.items():
            if regex == known:
                return name
        raise TokenizerJsonError(f"pre-tokenizer Split regex {regex!r} is not one we implement")
    raise TokenizerJsonError(f"pre_tokenizer {json.dumps(pre)[:200]} is not supported")


def _merges(model: dict) -> list[str]:
    out = []
    for m in model.get("merges") or []:
        out.append(" ".join(m) if isinstance(m, list) else str(m))
    return out


def _token_name(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _bos_from_post_processor(post: dict | None, ids: dict[str, int]) -> int | None:
    """The special token the post-processor puts before a single sequence, if any."""
    if not post:
        return None
    if post.get("type") == "Sequence":
        for step in post.get("processors") or []:
            found = _bos_from_post_processor(step, ids)
            if found is not None:
                return found
        return None
    if post.get("type") != "TemplateProcessing":
        return None
    single = post.get("single") or []
    if single and "SpecialToken" in single[0]:
        return ids.get(single[0]["SpecialToken"]["id"])
    return None


def from_tokenizer_json(directory: str) -> Tokenizer:
    """The Tokenizer of a Hugging Face model directory; TokenizerJsonError (or OSError) if it
    cannot be built exactly."""
    path = os.path.join(directory, "tokenizer.json")
    with open(path, encoding="utf-8") as fh:
        spec = json.load(fh)
    config_path = os.path.join(directory, "tokenizer_config.json")
    config: dict = {}
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerJsonError(f"model type {model.get('type')!r} is not supported (BPE is)")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise TokenizerJsonError("BPE with byte_fallback or subword affixes (SentencePiece-style) is not supported "
                                 "from tokenizer.json yet; serve the model's GGUF file")
    if spec.get("normalizer") is not None:
        raise TokenizerJsonError(f"normalizer {spec['normalizer'].get('type')!r} is not supported")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = spec.get("added_tokens") or []
    size = max([*vocab.values(), *(int(t["id"]) for t in added), -1]) + 1
    tokens: list[str | None] = [None] * size
    types = [TOKEN_TYPE_NORMAL] * size
    for piece, i in vocab.items():
        tokens[i] = piece
    for t in added:
        i = int(t["id"])
        tokens[i] = t["content"]
        types[i] = TOKEN_TYPE_CONTROL if t.get("special") else TOKEN_TYPE_USER_DEFINED
    holes = [i for i, t in enumerate(tokens) if t is None]
    for i in holes:  # ids no piece names: unreachable by encode, never produced by a sane model
        tokens[i], types[i] = f"<unused_{i}>", TOKEN_TYPE_CONTROL
    ids = {t: i for i, t in enumerate(tokens)}

    def special(key: str) -> int | None:
        name = _token_name(config.get(key))
        return ids.get(name) if name is not None else None

    bos = _bos_from_post_processor(spec.get("post_processor"), ids)
    add_bos = bos is not None or bool(config.get("add_bos_token", False))
    return Tokenizer(
        tokens, _merges(model), types, pre=pre,
        bos_token_id=bos if bos is not None else special("bos_token"),
        eos_token_id=special("eos_token"), unknown_token_id=special("unk_token"),
        padding_token_id=special("pad_token"), add_bos_token=add_bos,
    )
