"""A small typed client of cyserve.v1.Generation: `generate` (one reply), `stream` (the reply as
it is made), `chat` (messages through the model's chat template), `tokenize`, `model_info`, each
with a deadline and retries (retry.py), failures raised as CallError (errors.py).

    with Client("127.0.0.1:50051", tls_ca="ca.pem", token="...") as client:
        for piece in client.stream("Once upon a time", max_tokens=32, temperature=0):
            print(piece.text, end="")

Generation parameters are the .proto's own field names, flat: `temperature`, `top_p`, `seed` go
to SamplingParams, `max_tokens`, `stop`, `ignore_eos` to StoppingCriteria, `logprobs` to
OutputOptions, `request_id`, `priority`, ... to the request itself.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import EllipsisType
from typing import Any, TypeVar

import grpc

from cyserve.client.channel import ChannelOptions, open_channel
from cyserve.client.errors import CallError
from cyserve.client.retry import RetryPolicy
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

T = TypeVar("T")
Timeout = float | None | EllipsisType  # ... = the client's own timeout
DEFAULT_TIMEOUT_S = 120.0
Message = Mapping[str, str] | tuple[str, str] | pb.ChatMessage
_GROUPS = ("sampling", "stopping", "output")
_OWN = ("prompt", "messages", "prompt_token_ids", *_GROUPS)


def _parameter_table() -> dict[str, tuple[str | None, str]]:
    """Parameter name -> (sub-message of GenerateRequest or None for the request, field name)."""
    table: dict[str, tuple[str | None, str]] = {}
    for group in _GROUPS:
        for name in pb.GenerateRequest.DESCRIPTOR.fields_by_name[group].message_type.fields_by_name:
            table[name] = (group, name)
    for name in pb.GenerateRequest.DESCRIPTOR.fields_by_name:
        if name not in _OWN:
            table.setdefault(name, (None, name))
    return table


PARAMETERS = _parameter_table()


def generate_request(prompt: str | None = None, *, messages: Sequence[Message] | None = None,
                     **params: Any) -> pb.GenerateRequest:
    """A GenerateRequest from a prompt or chat messages and flat parameters. Raises TypeError for a
    parameter the contract does not have and ValueError when neither or both inputs are given."""
    if (prompt is None) == (messages is None):
        raise ValueError("give a prompt or chat messages (exactly one of them)")
    request = pb.GenerateRequest()
    if prompt is not None:
        request.prompt = prompt
    else:
        request.messages.extend(_chat_message(m) for m in messages or ())
        request.add_generation_prompt = True
    for name, value in params.items():
        if value is None:
            continue
        if name not in PARAMETERS:
            raise TypeError(f"unknown generation parameter {name!r}; the parameters are: "
                            f"{', '.join(sorted(PARAMETERS))}")
        group, field = PARAMETERS[name]
        target = getattr(request, group) if group else request
        current = getattr(target, field)
        if hasattr(current, "extend"):
            current.extend([value] if isinstance(value, str) else value)
        elif hasattr(current, "update"):
            current.update(value)
        else:
            setattr(target, field, value)
    return request


def _chat_message(message: Message) -> pb.ChatMessage:
    if isinstance(message, pb.ChatMessage):
        return message
    if isinstance(message, tuple):
        role, content = message
        return pb.ChatMessage(role=role, content=content)
    return pb.ChatMessage(role=message["role"], content=message["content"])


class Client:
    """A connection to one server. Connection arguments left None come from the client variables
    (CYSERVE_ADDRESS, CYSERVE_TLS_CA, CYSERVE_CLIENT_CERT, CYSERVE_CLIENT_KEY, CYSERVE_TOKEN), then
    the defaults; `options` instead takes them as given, the environment unread. `timeout` is each
    call's deadline in seconds (None = none), retries included; a method's own `timeout`
    overrides it for that call."""

    def __init__(self, address: str | None = None, *, tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, tls: bool = False, server_name: str | None = None,
                 token: str | None = None, timeout: float | None = DEFAULT_TIMEOUT_S,
                 retry: RetryPolicy | None = None, options: ChannelOptions | None = None) -> None:
        if options is None:
            options = ChannelOptions.from_env(address=address, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                              tls=tls or None, server_name=server_name, token=token)
        self.options = options
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.channel = open_channel(options)
        self.stub = pb_grpc.GenerationStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- calls ----

    def generate(self, prompt: str | pb.GenerateRequest, *, timeout: Timeout = ...,
                 **params: Any) -> pb.GenerateResponse:
        """The whole reply to a prompt (or a ready GenerateRequest) in one message."""
        request = self._request(prompt, params)
        return self._unary(lambda t: self.stub.Generate(request, timeout=t), timeout)

    def stream(self, prompt: str | pb.GenerateRequest, *, timeout: Timeout = ...,
               **params: Any) -> Iterator[pb.GenerateResponse]:
        """The reply as the server makes it, one message per few tokens; the last carries
        finish_reason and usage. Closing the iterator early cancels the call (the server stops
        generating). A failure before the first message is retried; after it, it is raised."""
        return self._stream(self._request(prompt, params), timeout)

    def chat(self, messages: Sequence[Message], *, stream: bool = False,
             timeout: Timeout = ...,
             **params: Any) -> pb.GenerateResponse | Iterator[pb.GenerateResponse]:
        """The assistant's reply to `messages` ({"role", "content"} mappings, (role, content)
        tuples or ChatMessage), through the model's chat template; streamed when `stream`."""
        request = generate_request(messages=messages, **params)
        if stream:
            return self._stream(request, timeout)
        return self._unary(lambda t: self.stub.Generate(request, timeout=t), timeout)

    def tokenize(self, text: str, *, timeout: Timeout = ...) -> list[int]:
        """The token ids the server's tokenizer gives `text` (special-token text parsed)."""
        reply = self._unary(lambda t: self.stub.Tokenize(pb.TokenizeRequest(text=text), timeout=t), timeout)
        return list(reply.token_ids)

    def model_info(self, *, timeout: Timeout = ...) -> pb.ModelInfo:
        return self._unary(lambda t: self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=t), timeout)

    # ---- deadlines and retries ----

    def _request(self, prompt: str | pb.GenerateRequest, params: dict[str, Any]) -> pb.GenerateRequest:
        if isinstance(prompt, pb.GenerateRequest):
            if params:
                raise TypeError(f"parameters ({', '.join(sorted(params))}) come with a prompt string; "
                                "a GenerateRequest carries its own")
            return prompt
        return generate_request(prompt, **params)

    def _deadline(self, timeout: Timeout) -> float | None:
        seconds = self.timeout if timeout is ... else timeout
        return None if seconds is None else time.monotonic() + seconds

    def _error(self, exc: grpc.RpcError) -> CallError:
        return CallError.from_rpc_error(exc, address=self.options.address, tls=self.options.uses_tls,
                                        client_cert=bool(self.options.tls_cert))

    def _wait_or_raise(self, attempt: int, error: CallError, deadline: float | None) -> None:
        remaining = None if deadline is None else deadline - time.monotonic()
        delay = self.retry.next_delay_s(attempt, error, remaining)
        if delay is None:
            raise error
        time.sleep(delay)

    def _unary(self, call: Callable[[float | None], T], timeout: Timeout) -> T:
        deadline = self._deadline(timeout)
        attempt = 1
        while True:
            try:
                return call(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            except grpc.RpcError as exc:
                error = self._error(exc)
            self._wait_or_raise(attempt, error, deadline)
            attempt += 1

    def _stream(self, request: pb.GenerateRequest, timeout: Timeout) -> Iterator[pb.GenerateResponse]:
        deadline = self._deadline(timeout)
        attempt = 1
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            call = self.stub.GenerateStream(request, timeout=remaining)
            received = False
            try:
                for message in call:
                    received = True
                    yield message
                return
            except grpc.RpcError as exc:
                error = self._error(exc)
                if received:
                    raise error from None
            finally:
                call.cancel()  # a no-op once the call has ended; stops the server when we stop reading
            self._wait_or_raise(attempt, error, deadline)
            attempt += 1
