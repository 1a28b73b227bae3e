"""Start-up time: `cyserve serve` process start to health SERVING, and where the time goes.

Each round starts a fresh server process on a free 127.0.0.1 port, polls grpc.health.v1 every
5 ms and stops the process once it answers SERVING. Printed: the median and best of `--rounds`,
plus, measured in this process, the import of the service package and the GGUF load (header
parse, tensor index, tokenizer, model description) that a start-up pays.

    python bench/bench_startup.py [--model PATH] [--rounds 5]

Target (issue 17): start to SERVING <= 1.5 s for the default model.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model: str, port: int) -> list[str]:
    script = shutil.which("cyserve")
    base = [script] if script else [sys.executable, "-m", "cyserve.service.cli"]
    return [*base, "serve", "--model", model, "--port", str(port), "--metrics-port", "0", "--http-port", "0"]


def time_to_serving(model: str, timeout: float = 120.0) -> float:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYSERVE_")}
    start = time.perf_counter()
    proc = subprocess.Popen(serve_command(model, port), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.perf_counter() - start < timeout:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - start
                except grpc.RpcError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode} before SERVING")
                time.sleep(0.005)
        raise RuntimeError(f"not SERVING after {timeout} s")
    finally:
        proc.terminate()
        proc.wait(30)


def in_process_parts(model: str) -> dict[str, float]:
    parts = {}
    t = time.perf_counter()
    import cyserve.service.server  # noqa: F401  (what the CLI imports before it loads a model)
    parts["import cyserve.service"] = time.perf_counter() - t
    from cyserve.fastpath.model.gguf_loader import load_gguf
    from cyserve.fastpath.tokenizer import Tokenizer

    t = time.perf_counter()
    weights = load_gguf(model)
    parts["load_gguf (header, tensors, description)"] = time.perf_counter() - t
    t = time.perf_counter()
    Tokenizer.from_gguf(weights.reader)
    parts["tokenizer from the file"] = time.perf_counter() - t
    return parts


def main() -> None:
    from cyserve.service.config import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    times = [time_to_serving(args.model) for _ in range(args.rounds)]
    print(f"model: {args.model}")
    print(f"start to SERVING over {args.rounds} rounds: median {statistics.median(times):.3f} s, "
          f"best {min(times):.3f} s")
    for name, seconds in in_process_parts(args.model).items():
        print(f"  {name:<42} {seconds:.3f} s")


if __name__ == "__main__":
    main()
