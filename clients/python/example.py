"""Streams a completion from a cyserve server, then shows how a refused request reads.

    pip install cyserve-client      # or: pip install ./clients/python from a checkout
    python example.py "Once upon a time"

The server and its credentials come from the environment: CYSERVE_ADDRESS (default
127.0.0.1:50051), CYSERVE_TLS_CA, CYSERVE_CLIENT_CERT / CYSERVE_CLIENT_KEY, CYSERVE_TOKEN.
"""
from __future__ import annotations

import sys

from cyserve.client import CallError, Client


def main(prompt: str) -> int:
    with Client(timeout=60) as client:  # options from the environment
        try:
            for piece in client.stream(prompt, max_tokens=32, temperature=0):
                print(piece.text, end="", flush=True)
                if piece.finish_reason:
                    print(f"\n[{piece.usage.completion_tokens} tokens]")
            client.generate(prompt, top_p=2)  # out of range: the server names the field
        except CallError as error:
            print(f"refused: {error}")
            return 0 if [v.field for v in error.violations] == ["sampling.top_p"] else 1
    return 1


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "Once upon a time"))
