"""The `cyserve` command.

    cyserve serve [--host H] [--port P] [--model PATH] [--threads N] ...   run the gRPC server
    cyserve generate "prompt" [--chat] [--max-tokens N] [--temperature T]  stream a completion
    cyserve tokenize "text" [--model PATH]                                  token ids as JSON
    cyserve bench [--address A] [--concurrency N | --sweep 1,4,16] ...      serving benchmark

`serve` flags also come from CYSERVE_* environment variables (a flag wins over its variable);
`generate` talks to a running server; `tokenize` reads the tokenizer straight from the GGUF file
(no server, no weights loaded). Usage errors and unusable models exit with status 2, failed calls
with 1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from cyserve.fastpath.errors import ModelLoadError
from cyserve.fastpath.settings import parse_bool, settings_of
from cyserve.service.config import (
    DEFAULT_HOST, DEFAULT_PORT, ENV_VARS, ServerConfig, default_model_path, default_text, flag_of,
)

ADDRESS_ENV = "CYSERVE_ADDRESS"
DEFAULT_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


# ---- serve ----


def _serve(args: argparse.Namespace) -> int:
    from cyserve.service.observability.log import configure_logging
    from cyserve.service.server import ServeError, serve

    try:
        config = ServerConfig.from_env(**{f.name: getattr(args, f.name) for f, _ in settings_of(ServerConfig)})
    except ValueError as exc:
        return _fail(str(exc), status=2)
    configure_logging()
    try:
        asyncio.run(serve(config))
    except (ModelLoadError, ServeError) as exc:
        return _fail(str(exc), status=2)
    return 0


# ---- generate ----


def _generate(args: argparse.Namespace) -> int:
    import grpc

    from cyserve.v1 import generation_pb2 as pb
    from cyserve.v1 import generation_pb2_grpc as pb_grpc

    request = _generate_request(args, pb)
    out = sys.stdout
    ends_with_newline = True
    last = None
    with grpc.insecure_channel(args.address) as channel:
        call = pb_grpc.GenerationStub(channel).GenerateStream(request, timeout=args.timeout)
        try:
            for last in call:
                if last.text:
                    out.write(last.text)
                    out.flush()
                    ends_with_newline = last.text.endswith("\n")
        except grpc.RpcError as exc:
            if not ends_with_newline:
                out.write("\n")
            return _fail(_describe_rpc_error(exc, args.address), status=1)
        except KeyboardInterrupt:
            call.cancel()
            raise
    if not ends_with_newline:
        out.write("\n")
    if args.verbose and last is not None:
        print(
            f"finish_reason={pb.FinishReason.Name(last.finish_reason)} "
            f"prompt_tokens={last.usage.prompt_tokens} "
            f"completion_tokens={last.usage.completion_tokens} request_id={last.request_id}",
            file=sys.stderr,
        )
    return 0


def _generate_request(args: argparse.Namespace, pb: Any) -> Any:
    prompt = _text_arg(args.prompt)
    request = pb.GenerateRequest()
    if args.chat:
        request.messages.add(role="user", content=prompt)
        request.add_generation_prompt = True
    else:
        request.prompt = prompt
    for name in ("temperature", "top_p", "top_k", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(request.sampling, name, value)
    if args.max_tokens is not None:
        request.stopping.max_tokens = args.max_tokens
    request.stopping.ignore_eos = args.ignore_eos
    request.stopping.stop.extend(args.stop)
    return request


def _describe_rpc_error(exc: Any, address: str) -> str:
    """One line for the status, then one per field violation."""
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    code = exc.code()
    violations = []
    status = rpc_status.from_call(exc)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [f"  {v.field}: {v.description}" for v in bad_request.field_violations]
    if violations:
        return "\n".join([f"{code.name}: the server rejected the request:", *violations])
    message = f"{code.name}: {exc.details()}"
    if code is grpc.StatusCode.UNAVAILABLE:
        message += f" (is `cyserve serve` running at {address}?)"
    return message


# ---- tokenize ----


def _tokenize(args: argparse.Namespace) -> int:
    from cyserve.fastpath.model.gguf_file import GGUFFile
    from cyserve.fastpath.tokenizer import Tokenizer

    text = _text_arg(args.text)
    try:
        path = args.model or os.environ.get(ENV_VARS["model_path"][0]) or default_model_path()
        if not os.path.isfile(path):
            raise ModelLoadError(path, "no such file")
        try:
            tokenizer = Tokenizer.from_gguf(GGUFFile(path))
        except Exception as exc:  # the reader fails in many ways on a corrupt file
            raise ModelLoadError(path, f"no usable tokenizer ({type(exc).__name__}: {exc})") from exc
    except ModelLoadError as exc:
        return _fail(str(exc), status=2)
    print(json.dumps(list(tokenizer.encode(text, parse_special=True))))
    return 0


# ---- bench ----


def _bench(args: argparse.Namespace) -> int:
    import cyserve.loadgen

    return cyserve.loadgen.run(args)


# ---- helpers ----


def _text_arg(value: str) -> str:
    """The argument itself, or standard input when it is "-"."""
    return sys.stdin.read() if value == "-" else value


def _fail(message: str, status: int, stream: TextIO | None = None) -> int:
    print(f"cyserve: error: {message}", file=stream or sys.stderr)
    return status


def _flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A setting's parser as an argparse type (its ValueError becomes a usage error)."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _add_settings(serve: argparse.ArgumentParser) -> None:
    """One flag per setting of ServerConfig; unset flags stay None so the environment may decide.
    A bool setting is a switch to the opposite of its default (--no-prefix-caching, --cuda-graphs)."""
    for f, spec in settings_of(ServerConfig):
        text = f"{spec.help} (env {spec.env}; default {default_text(f, spec)})"
        if spec.parse is parse_bool:
            action = "store_false" if f.default else "store_true"
            serve.add_argument(flag_of(f.name, spec), dest=f.name, action=action, default=None, help=text)
            continue
        serve.add_argument(flag_of(f.name, spec), dest=f.name, type=_flag_type(spec.parse), metavar=spec.metavar,
                           choices=spec.choices or None, help=text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cyserve", description="gRPC inference microservice for large language models."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve a model over gRPC")
    serve.set_defaults(run=_serve)
    _add_settings(serve)

    generate = commands.add_parser("generate", help="stream a completion from a running server")
    generate.set_defaults(run=_generate)
    generate.add_argument("prompt", help='prompt text ("-" reads standard input)')
    generate.add_argument(
        "--chat", action="store_true",
        help="send the prompt as a user message; the server applies the model's chat template",
    )
    generate.add_argument("--max-tokens", type=int, help="most tokens to generate (server default 256)")
    generate.add_argument("--temperature", type=float, help="0 = greedy (server default 1.0)")
    generate.add_argument("--top-p", type=float, help="nucleus cut in (0, 1] (server default 1.0)")
    generate.add_argument("--top-k", type=int, help="0 = no cut (server default 0)")
    generate.add_argument("--seed", type=int, help="seed for reproducible sampling")
    generate.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)"
    )
    generate.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence")
    generate.add_argument(
        "--address", default=os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS,
        help=f"server address (env {ADDRESS_ENV}; default {DEFAULT_ADDRESS})",
    )
    generate.add_argument("--timeout", type=float, metavar="SECONDS", help="deadline of the call")
    generate.add_argument(
        "-v", "--verbose", action="store_true", help="print finish reason and usage to stderr"
    )

    tokenize = commands.add_parser("tokenize", help="print the token ids of a text (no server)")
    tokenize.set_defaults(run=_tokenize)
    tokenize.add_argument("text", help='text to tokenize ("-" reads standard input)')
    tokenize.add_argument(
        "--model", metavar="PATH",
        help=f"GGUF file whose tokenizer to use (env {ENV_VARS['model_path'][0]}; default the default model)",
    )

    bench = commands.add_parser(
        "bench", help="benchmark a running server (cyserve over gRPC, or OpenAI-compatible HTTP)"
    )
    bench.set_defaults(run=_bench)
    from cyserve.loadgen.options import add_arguments as add_bench_arguments

    add_bench_arguments(bench, default_address=os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
