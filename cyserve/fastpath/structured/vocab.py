"""The vocabulary as the bytes each token id writes, for the grammar matcher's token tables.

Built on the Tokenizer's public methods only (`id_to_piece`, `is_special`): a byte-level BPE piece
(GPT-2's printable alphabet) maps back to its bytes; a SentencePiece-style piece writes "▁" as a
space and "<0xNN>" as that byte; any other piece is its own UTF-8. Special (control) tokens write
nothing: a constraint never produces them, except the end-of-sequence tokens where it is complete.
Ids past the tokenizer's vocabulary (a model's padded embedding rows) write nothing either.
"""
from __future__ import annotations

import re

from cyserve.fastpath.contract import TokenizerClient

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _is_sentencepiece(pieces: list[str]) -> bool:
    """SentencePiece spells spaces "▁" and raw bytes "<0xNN>"; byte-level BPE spells a space "Ġ"."""
    spaced = sum("▁" in p for p in pieces)
    return spaced > sum("Ġ" in p for p in pieces) and any(_BYTE_TOKEN.fullmatch(p) for p in pieces)


def token_bytes(tokenizer: TokenizerClient, vocab_size: int) -> list[bytes]:
    """The bytes of every id 0..vocab_size-1 (vocab_size: the model's logits width, at least the
    tokenizer's vocabulary)."""
    n = min(tokenizer.vocab_size, vocab_size)
    pieces = [tokenizer.id_to_piece(i) for i in range(n)]
    special = [tokenizer.is_special(i) for i in range(n)]
    out: list[bytes] = []
    if _is_sentencepiece(pieces):
        for piece, is_special in zip(pieces, special):
            byte = _BYTE_TOKEN.fullmatch(piece)
            out.append(b"" if is_special else bytes([int(byte.group(1), 16)]) if byte
                       else piece.replace("▁", " ").encode("utf-8"))
    else:
        alphabet = _byte_level_alphabet()
        for piece, is_special in zip(pieces, special):
            if is_special:
                out.append(b"")
            elif all(ch in alphabet for ch in piece):
                out.append(bytes(alphabet[ch] for ch in piece))
            else:  # an added token spelled as plain text
                out.append(piece.encode("utf-8"))
    out.extend(b"" for _ in range(vocab_size - n))
    return out
