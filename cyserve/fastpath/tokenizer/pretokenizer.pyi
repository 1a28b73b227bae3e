from typing import Final

# tokenizer.ggml.pre name -> scanner kind
PRE_TOKENIZERS: Final[dict[str, int]]

def pretokenize(text: str, pre: str = "smollm") -> list[str]: ...
# for tests: the class table as bytes, index = code point: 0 other, 1 \p{L}, 2 \p{N}, 3 \s
def _char_classes() -> bytes: ...
