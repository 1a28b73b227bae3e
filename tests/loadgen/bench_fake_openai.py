"""A tiny OpenAI-compatible server for the bench tests: streaming `/v1/completions` over
server-sent events (one chunk per token, then a usage chunk and `[DONE]`, as llama-server sends
them), `/v1/models` and llama.cpp's `/tokenize` (one token per word).

Run as a script it stands in for llama.cpp's `llama-server`: it takes the same flags, serves on
--port, and writes its command line to $FAKE_LLAMA_ARGS_FILE when that is set.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_ID = "fake-model"


class FakeOpenAIServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the client opens many connections at once (the default is 5)

    def __init__(self, port: int = 0, token_delay_s: float = 0.002) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.token_delay_s = token_delay_s
        self.fail_status: int | None = None  # answer every completion with this status
        self.completions: list[dict[str, Any]] = []  # request bodies, in arrival order
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})
        elif self.path == "/health":
            self._json(200, {"status": "ok"})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            self._json(200, {"tokens": list(range(len(body["content"].split())))})
        elif self.path == "/v1/completions":
            self._completion(body)
        else:
            self._json(404, {"error": "not found"})

    def _completion(self, body: dict[str, Any]) -> None:
        server = self.server
        with server.lock:
            server.completions.append(body)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if server.fail_status is not None:
                self._json(server.fail_status, {"error": {"message": "slots busy"}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            num_tokens = int(body["max_tokens"])
            for i in range(num_tokens):
                time.sleep(server.token_delay_s)
                self._event({"choices": [{"text": f" w{i}", "index": 0, "finish_reason": None}]})
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": num_tokens}
            self._event({"choices": [{"text": "", "index": 0, "finish_reason": "length"}],
                         "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        finally:
            with server.lock:
                server.in_flight -= 1

    def _event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def running_fake_server(token_delay_s: float = 0.002) -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer(token_delay_s=token_delay_s)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def main(argv: list[str]) -> None:
    """As a stand-in llama-server: accepts its flags, serves on --port until terminated."""
    args_file = os.environ.get("FAKE_LLAMA_ARGS_FILE")
    if args_file:
        with open(args_file, "w", encoding="utf-8") as f:
            json.dump(argv, f)
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args(argv)
    FakeOpenAIServer(port=args.port).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
