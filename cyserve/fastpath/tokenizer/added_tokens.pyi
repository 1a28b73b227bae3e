from typing import final

@final
class AddedTokens:
    count: int
    def __init__(self, tokens: dict[str, int]) -> None: ...
    def find_all(self, text: str) -> list[tuple[int, int, int]]: ...
