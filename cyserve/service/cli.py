"""The `cyserve` command.

    cyserve serve [--host H] [--port P] [--model PATH] [--threads N] ...   run the gRPC server
    cyserve generate "prompt" [--chat] [--max-tokens N] [--temperature T]  stream a completion
    cyserve tokenize "text" [--model PATH | --address A]                    token ids as JSON
    cyserve bench [--address A] [--concurrency N | --sweep 1,4,16] ...      serving benchmark

`serve` flags also come from CYSERVE_* environment variables (a flag wins over its variable);
`generate` talks to a running server; `tokenize` reads the tokenizer straight from the GGUF file
(no server, no weights loaded), or asks a server when given --address, --tls-ca or --token. Both
reach a server with TLS (--tls-ca, and --tls-cert/--tls-key for mutual TLS) and a bearer token
(--token), or the client variables of cyserve.client (CYSERVE_TLS_CA, CYSERVE_CLIENT_CERT,
CYSERVE_CLIENT_KEY, CYSERVE_TOKEN). Usage errors, unusable models and unusable TLS files exit with
status 2, failed calls with 1.
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
    from cyserve.client import CallError
    from cyserve.v1 import generation_pb2 as pb

    try:
        client = _client(args)
    except ValueError as exc:
        return _fail(str(exc), status=2)
    request = _generate_request(args, pb)
    out = sys.stdout
    ends_with_newline = True
    last = None
    with client:
        stream = client.stream(request, timeout=args.timeout)
        try:
            for last in stream:
                if last.text:
                    out.write(last.text)
                    out.flush()
                    ends_with_newline = last.text.endswith("\n")
        except CallError as exc:
            if not ends_with_newline:
                out.write("\n")
            return _fail(_describe_call_error(exc), status=1)
        except KeyboardInterrupt:
            stream.close()  # cancels the call: the server stops generating
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


# ---- reaching a server ----

# How a refused call's hint names what to change: this command's flags (cyserve.client's names).
_FLAG_NAMES = {
    "token": "--token (env CYSERVE_TOKEN)",
    "tls_ca": "--tls-ca (env CYSERVE_TLS_CA)",
    "client_cert": "--tls-cert and --tls-key (env CYSERVE_CLIENT_CERT, CYSERVE_CLIENT_KEY)",
    "server": "`cyserve serve`",
}


def _client(args: argparse.Namespace) -> Any:
    """A cyserve.client.Client from the connection flags, each falling back to its variable. One
    try per call: a command's user retries by running it again. Raises ValueError naming the flag."""
    from cyserve.client import ENV_VARS, NO_RETRY, ChannelOptions, Client

    env = os.environ
    tls_ca = args.tls_ca or env.get(ENV_VARS["tls_ca"]) or None
    tls_cert = args.tls_cert or env.get(ENV_VARS["tls_cert"]) or None
    tls_key = args.tls_key or env.get(ENV_VARS["tls_key"]) or None
    token = args.token if args.token is not None else env.get(ENV_VARS["token"])
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key (env CYSERVE_CLIENT_CERT, CYSERVE_CLIENT_KEY) come together: "
                         "give the client certificate and its key, or neither")
    if tls_cert and not tls_ca:
        raise ValueError("a client certificate is for TLS: give --tls-ca (env CYSERVE_TLS_CA), the CA of the "
                         "server's certificate, too")
    if token is not None and not token.strip():
        raise ValueError("the token is empty: give --token (env CYSERVE_TOKEN) the server's token, or leave it out")
    options = ChannelOptions(args.address, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token)
    return Client(options=options, timeout=None, retry=NO_RETRY)


def _describe_call_error(exc: Any) -> str:
    """The status (one line per field violation under it) and what to change, in flag names."""
    if exc.violations:
        return "\n".join([f"{exc.code.name}: the server rejected the request:",
                          *(f"  {v.field}: {v.description}" for v in exc.violations)])
    return exc.describe(_FLAG_NAMES)


def _add_connection_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--tls-ca", metavar="PEM",
                         help="CA certificate(s) that signed the server's certificate: use TLS (env CYSERVE_TLS_CA)")
    command.add_argument("--tls-cert", metavar="PEM",
                         help="client certificate, for a server with mutual TLS (env CYSERVE_CLIENT_CERT)")
    command.add_argument("--tls-key", metavar="PEM", help="the client certificate's key (env CYSERVE_CLIENT_KEY)")
    command.add_argument("--token", help="bearer token the server requires (env CYSERVE_TOKEN)")


# ---- tokenize ----


def _tokenize(args: argparse.Namespace) -> int:
    text = _text_arg(args.text)
    if args.address or args.tls_ca or args.token is not None:
        if args.model:
            return _fail("--model reads a local file, --address/--tls-ca/--token ask a server: give one or the other",
                         status=2)
        return _tokenize_on_server(args, text)
    from cyserve.fastpath.model.gguf_file import GGUFFile
    from cyserve.fastpath.tokenizer import Tokenizer

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


def _tokenize_on_server(args: argparse.Namespace, text: str) -> int:
    from cyserve.client import CallError

    args.address = args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    try:
        client = _client(args)
    except ValueError as exc:
        return _fail(str(exc), status=2)
    with client:
        try:
            ids = client.tokenize(text, timeout=args.timeout)
        except CallError as exc:
            return _fail(_describe_call_error(exc), status=1)
    print(json.dumps(ids))
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
    _add_connection_flags(generate)
    generate.add_argument(
        "-v", "--verbose", action="store_true", help="print finish reason and usage to stderr"
    )

    tokenize = commands.add_parser(
        "tokenize", help="print the token ids of a text (from the model file, or a server with --address)")
    tokenize.set_defaults(run=_tokenize)
    tokenize.add_argument("text", help='text to tokenize ("-" reads standard input)')
    tokenize.add_argument(
        "--model", metavar="PATH",
        help=f"GGUF file whose tokenizer to use (env {ENV_VARS['model_path'][0]}; default the default model)",
    )
    tokenize.add_argument(
        "--address", help=f"ask the server at this address instead (default {ADDRESS_ENV} or {DEFAULT_ADDRESS} "
                          "when --tls-ca or --token is given)",
    )
    tokenize.add_argument("--timeout", type=float, metavar="SECONDS", help="deadline of the server call")
    _add_connection_flags(tokenize)

    bench = commands.add_parser(
        "bench", help="benchmark a running server (cyserve over gRPC, or OpenAI-compatible HTTP)"
    )
    bench.set_defaults(run=_bench)
    from cyserve.loadgen.options import add_arguments as add_bench_arguments

    add_bench_arguments(bench, default_address=os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
