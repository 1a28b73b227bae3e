"""AddedTokens (the added tokens found in text) against its plain reference: a regex of the
tokens, longest first, which finds the leftmost token and the longest one there."""
from __future__ import annotations

import re

import pytest

from cyserve.fastpath.tokenizer.added_tokens import AddedTokens

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def reference(tokens: dict[str, int], text: str) -> list[tuple[int, int, int]]:
    pieces = sorted((t for t in tokens if t), key=len, reverse=True)
    if not pieces:
        return []
    pattern = re.compile("|".join(map(re.escape, pieces)))
    return [(m.start(), m.end(), tokens[m.group()]) for m in pattern.finditer(text)]


TOKENS = {"<s>": 1, "</s>": 2, "<start_of_turn>": 3, "<start": 4, "\n": 5, "\n\n": 6, "\n\n\n": 7,
          "é<": 8, "日本": 9, "👍🏽": 10, "": 11}


def test_leftmost_then_longest():
    added = AddedTokens(TOKENS)
    assert added.count == 10                               # the empty text is left out
    assert added.find_all("a<start_of_turn>b<startx</s>") == [(1, 16, 3), (17, 23, 4), (24, 28, 2)]
    assert added.find_all("\n\n\n\n\n") == [(0, 3, 7), (3, 5, 6)]
    assert added.find_all("caféé<日本👍🏽👍") == [(4, 6, 8), (6, 8, 9), (8, 10, 10)]  # code point offsets
    assert added.find_all("") == [] and added.find_all("plain") == []
    assert AddedTokens({}).find_all("<s>") == []


_alphabet = st.sampled_from(["<", ">", "s", "/", "\n", "é", "日", "本", "👍", "🏽", "x", "start", "_of_turn"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(alphabet="<>s/\né日本x", min_size=1, max_size=5), st.integers(0, 99), max_size=12),
       st.lists(_alphabet, max_size=30).map("".join))
def test_matches_reference(tokens, text):
    assert AddedTokens(tokens).find_all(text) == reference(tokens, text)
    assert AddedTokens(TOKENS).find_all(text) == reference(TOKENS, text)
