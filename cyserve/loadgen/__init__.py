"""`cyserve bench`: a serving benchmark for cyserve (gRPC) and OpenAI-compatible servers
(llama.cpp's llama-server, vLLM), with vLLM's serving-benchmark metrics.

A client only: it talks to servers through their public APIs (the generated `cyserve.v1` stubs,
HTTP) and never imports the engine. Modules: `workload` (prompts of exact token lengths),
`backends` (one request, timed), `runner` (closed loop / Poisson arrivals), `metrics`
(statistics), `sweep` (table and plot), `llama_server` (spawning llama.cpp), `options` (the
command line), `main` (the subcommand).
"""
import argparse

from cyserve.loadgen.options import add_arguments


def run(args: argparse.Namespace) -> int:
    """Runs `cyserve bench` with parsed arguments (imports the client stack only when used)."""
    from cyserve.loadgen.main import run as _run

    return _run(args)


__all__ = ["add_arguments", "run"]
