"""Tokenizers read from the model file: byte-level BPE with its pre-tokenizers (`tokenizer`,
`pretokenizer`), and the incremental UTF-8-safe detokenizer."""
from cyserve.fastpath.tokenizer.tokenizer import IncrementalDecoder, Tokenizer

__all__ = ["IncrementalDecoder", "Tokenizer"]
