"""The systems a benchmark drives: cyserve over gRPC, or any OpenAI-compatible HTTP server
(llama.cpp's llama-server, vLLM) through streaming `/v1/completions`.

Both record the same timings the same way: the clock starts just before the request is sent,
TTFT is the arrival of the first message carrying tokens (gRPC: `token_ids`; HTTP: a non-empty
`text`), each later such message adds one inter-token gap, and the end-to-end latency stops at
the end of the stream.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from cyserve.loadgen.metrics import RequestResult
from cyserve.loadgen.workload import SampleRequest

READY_POLL_S = 0.25


@dataclass(frozen=True)
class GenerationOptions:
    temperature: float = 0.0  # greedy: the output text does not change what is measured
    ignore_eos: bool = True  # so every request generates exactly output_len tokens


class Backend(Protocol):
    label: str

    async def wait_ready(self, timeout_s: float) -> None: ...

    async def count_tokens(self, text: str) -> int: ...

    async def max_model_len(self) -> int | None: ...

    async def generate(self, request: SampleRequest, options: GenerationOptions) -> RequestResult: ...

    async def close(self) -> None: ...


class BackendUnavailableError(RuntimeError):
    """The server did not answer, or answered as something else than expected."""


class _StreamClock:
    """Turns arrival times of token-carrying messages into TTFT and inter-token gaps."""

    def __init__(self, result: RequestResult) -> None:
        self.result = result
        self.start = time.perf_counter()
        self.last = self.start
        self.num_chunks = 0

    def tokens_arrived(self, num_tokens: int) -> None:
        now = time.perf_counter()
        if self.num_chunks == 0:
            self.result.ttft = now - self.start
        else:
            self.result.itl.append(now - self.last)
        self.last = now
        self.num_chunks += 1
        self.result.output_tokens += num_tokens

    def finish(self) -> None:
        self.result.latency = time.perf_counter() - self.start
        if self.result.output_tokens == 0 and not self.result.error:
            self.result.error = "the stream ended without any token"
        self.result.success = not self.result.error


# ---- cyserve over gRPC ----


class GrpcBackend:
    """cyserve's `Generation` service: GenerateStream, Tokenize and GetModelInfo."""

    def __init__(self, address: str, label: str = "cyserve") -> None:
        import grpc

        from cyserve.v1 import generation_pb2 as pb
        from cyserve.v1 import generation_pb2_grpc as pb_grpc

        self.label = label
        self.address = address
        self._grpc = grpc
        self._pb = pb
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = pb_grpc.GenerationStub(self._channel)

    async def wait_ready(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout_s)
        except asyncio.TimeoutError:
            raise BackendUnavailableError(
                f"no gRPC server at {self.address} after {timeout_s:.0f} s "
                "(is `cyserve serve` running there?)"
            ) from None

    async def count_tokens(self, text: str) -> int:
        response = await self._stub.Tokenize(self._pb.TokenizeRequest(text=text))
        return len(response.token_ids)

    async def max_model_len(self) -> int | None:
        info = await self._stub.GetModelInfo(self._pb.GetModelInfoRequest())
        return info.max_model_len or info.context_length or None

    async def generate(self, request: SampleRequest, options: GenerationOptions) -> RequestResult:
        pb = self._pb
        message = pb.GenerateRequest(prompt=request.prompt, request_id=f"bench-{uuid.uuid4().hex}")
        message.sampling.temperature = options.temperature
        message.stopping.max_tokens = request.output_len
        message.stopping.ignore_eos = options.ignore_eos
        result = RequestResult(prompt_len=request.prompt_len, output_len=request.output_len)
        clock = _StreamClock(result)
        call = self._stub.GenerateStream(message)
        try:
            async for response in call:
                if response.token_ids:
                    clock.tokens_arrived(len(response.token_ids))
        except self._grpc.aio.AioRpcError as exc:
            result.error = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:  # the runner's per-request timeout: free the server's slot
            call.cancel()
            raise
        clock.finish()
        return result

    async def close(self) -> None:
        await self._channel.close()


# ---- OpenAI-compatible HTTP ----


def sse_data(line: str) -> str | None:
    """The payload of one server-sent-events line: the text after `data:`, else None
    (blank separators, comments and other fields carry nothing for us)."""
    if not line.startswith("data:"):
        return None
    return line[len("data:"):].strip()


class OpenAIBackend:
    """An OpenAI-compatible server, driven through streaming `POST /v1/completions`."""

    def __init__(self, base_url: str, label: str = "openai", model: str | None = None) -> None:
        try:
            import httpx
        except ImportError:
            raise BackendUnavailableError(
                "the OpenAI backend needs httpx: pip install 'cyserve[bench]'"
            ) from None
        self.label = label
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._httpx = httpx
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            # no read timeout: a request waits in the server's queue for as long as it takes
            timeout=httpx.Timeout(None, connect=30.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )

    async def wait_ready(self, timeout_s: float) -> None:
        """Polls /v1/models (served by llama-server and vLLM once the model is loaded)."""
        deadline = time.monotonic() + timeout_s
        problem = "no answer"
        while time.monotonic() < deadline:
            try:
                response = await self._client.get("/v1/models")
                if response.status_code == 200:
                    if self.model is None:
                        self.model = _first_model_id(response.json())
                    return
                problem = f"HTTP {response.status_code}"
            except self._httpx.TransportError as exc:
                problem = type(exc).__name__
            await asyncio.sleep(READY_POLL_S)
        raise BackendUnavailableError(
            f"no OpenAI-compatible server ready at {self.base_url} after {timeout_s:.0f} s ({problem})"
        )

    async def count_tokens(self, text: str) -> int:
        # llama-server reads "content", vLLM reads "prompt"; each ignores the other's field
        response = await self._client.post(
            "/tokenize", json={"content": text, "prompt": text, "model": self.model}
        )
        if response.status_code != 200:
            raise BackendUnavailableError(
                f"{self.base_url}/tokenize answered HTTP {response.status_code}; "
                "build the workload with a server that tokenizes"
            )
        return len(response.json()["tokens"])

    async def max_model_len(self) -> int | None:
        response = await self._client.get("/v1/models")
        if response.status_code != 200:
            return None
        for entry in response.json().get("data", []):
            for key in ("max_model_len", "n_ctx"):  # vLLM / llama.cpp
                value = entry.get(key) or (entry.get("meta") or {}).get(key)
                if isinstance(value, int) and value > 0:
                    return value
        return None

    async def generate(self, request: SampleRequest, options: GenerationOptions) -> RequestResult:
        payload = {
            "model": self.model or "default",
            "prompt": request.prompt,
            "max_tokens": request.output_len,
            "temperature": options.temperature,
            "ignore_eos": options.ignore_eos,  # llama.cpp and vLLM extension
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        result = RequestResult(prompt_len=request.prompt_len, output_len=request.output_len)
        clock = _StreamClock(result)
        try:
            usage_tokens = await self._stream(payload, clock)
        except self._httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            usage_tokens = None
        # the server's count is exact; counting chunks is the fallback when it sends no usage
        if usage_tokens is not None and not result.error:
            result.output_tokens = usage_tokens
        clock.finish()
        return result

    async def _stream(self, payload: dict[str, Any], clock: _StreamClock) -> int | None:
        """Reads one completion stream into `clock`; the usage's completion_tokens, if sent."""
        usage_tokens = None
        async with self._client.stream("POST", "/v1/completions", json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                clock.result.error = f"HTTP {response.status_code}: {body[:200]}"
                return None
            async for line in response.aiter_lines():
                data = sse_data(line)
                if not data:
                    continue
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    clock.result.error = f"server error: {chunk['error']}"
                    break
                choices = chunk.get("choices") or []
                if choices and choices[0].get("text"):
                    clock.tokens_arrived(1)
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
        return usage_tokens

    async def close(self) -> None:
        await self._client.aclose()


def _first_model_id(listing: Any) -> str | None:
    data = listing.get("data") if isinstance(listing, dict) else None
    if data and isinstance(data[0], dict):
        return data[0].get("id")
    return None
