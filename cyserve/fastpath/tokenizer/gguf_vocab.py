"""A GGUF file's tokenizer metadata (`tokenizer.ggml.*`) turned into `Tokenizer` arguments.

Owns what the keys mean: the vocabulary type (`gpt2`: byte-level BPE, `llama`: SentencePiece),
the special ids and BOS/EOS flags with llama.cpp's defaults, the end-of-generation ids, and the
per-family quirks that decide how a SentencePiece vocabulary splits text (the leading-space rule,
the merge order, Gemma's whitespace tokens), chosen as Hugging Face's GGUF loader chooses them so
that ids agree with transformers.
"""
from __future__ import annotations

from typing import Any

# GGUF token types (llama.cpp's llama_token_type)
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_USER_DEFINED = 4

SUPPORTED_MODELS = ("gpt2", "llama")

# Tokens that end a turn or a message in the chat formats of the families served, matched by text
# as llama.cpp does (its list of EOG texts), beside the eos/eot/eom ids the file gives.
EOG_TEXTS = (
    "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>", "<end_of_utterance>",
)

_MISSING = object()


def field(reader: Any, key: str, default: Any = _MISSING) -> Any:
    """A metadata value as Python (str, int, float, bool or list)."""
    entry = reader.fields.get(key)
    if entry is None:
        if default is _MISSING:
            raise ValueError(f"GGUF metadata has no {key!r}; cannot build the tokenizer")
        return default
    if hasattr(entry, "contents"):
        return entry.contents()
    import gguf                                         # gguf < 0.11: no ReaderField.contents()
    kind = entry.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        if entry.types[len(entry.types) - 1] == gguf.GGUFValueType.STRING:
            return [bytes(entry.parts[i]).decode("utf-8") for i in entry.data]
        return [entry.parts[i].tolist()[0] for i in entry.data]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(entry.parts[entry.data[0]]).decode("utf-8")
    return entry.parts[entry.data[0]].tolist()[0]


def eog_token_ids(tokens: list[str], ids: list[int | None]) -> frozenset[int]:
    """The given ids (eos, eot, eom) that exist, and every token spelled as one of EOG_TEXTS."""
    found = {i for i in ids if i is not None and 0 <= i < len(tokens)}
    wanted = set(EOG_TEXTS)
    found.update(i for i, piece in enumerate(tokens) if piece in wanted)
    return frozenset(found)


def tokenizer_kwargs(reader: Any, pre: str | None = None) -> dict[str, Any]:
    """Keyword arguments of `Tokenizer(...)` for the file `reader` reads. `pre` overrides
    tokenizer.ggml.pre. ValueError names a vocabulary type that is not supported."""
    model = field(reader, "tokenizer.ggml.model")
    if model not in SUPPORTED_MODELS:
        raise ValueError(f"unsupported tokenizer model {model!r} (tokenizer.ggml.model); "
                         f"supported: {', '.join(SUPPORTED_MODELS)}")
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = field(reader, "tokenizer.ggml.token_type", None)
    ids = {name: field(reader, f"tokenizer.ggml.{name}_token_id", None)
           for name in ("bos", "eos", "unknown", "padding", "eot", "eom")}
    kwargs: dict[str, Any] = dict(
        model=model, token_types=types,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"],
        unknown_token_id=ids["unknown"], padding_token_id=ids["padding"],
        add_eos_token=bool(field(reader, "tokenizer.ggml.add_eos_token", False)),
        eog_token_ids=eog_token_ids(tokens, [ids["eos"], ids["eot"], ids["eom"]]),
    )
    if model == "gpt2":
        kwargs.update(merges=field(reader, "tokenizer.ggml.merges"),
                      pre=pre if pre is not None else field(reader, "tokenizer.ggml.pre", "default"),
                      add_bos_token=bool(field(reader, "tokenizer.ggml.add_bos_token", False)))
    else:
        architecture = str(field(reader, "general.architecture", ""))
        gemma = architecture.startswith("gemma")
        if gemma:
            tokens, types = respell_space_tokens(tokens, types)
        prefix = bool(field(reader, "tokenizer.ggml.add_space_prefix", True))
        kwargs.update(
            scores=field(reader, "tokenizer.ggml.scores", None), token_types=types,
            # SentencePiece files without the flag get a BOS (llama.cpp and transformers agree)
            add_bos_token=bool(field(reader, "tokenizer.ggml.add_bos_token", True)),
            space_prefix="none" if not prefix else ("every" if architecture == "phi3" else "first"),
            merge_order="position" if gemma else "score",
        )
    kwargs["tokens"] = tokens
    return kwargs


def respell_space_tokens(tokens: list[str], types: list[int] | None) -> tuple[list[str], list[int] | None]:
    """Gemma stores its runs-of-spaces tokens with real spaces ("  ", marked USER_DEFINED), while
    text reaches the merges with spaces spelled U+2581: such a token becomes "▁" * len, a normal
    piece that merges form (what transformers' Gemma loader does)."""
    tokens = list(tokens)
    types = list(types) if types is not None else None
    for i, piece in enumerate(tokens):
        if " " in piece and not piece.strip():
            tokens[i] = "\u2581" * len(piece)
            if types is not None and types[i] == TOKEN_TYPE_USER_DEFINED:
                types[i] = TOKEN_TYPE_NORMAL
    return tokens, types
