"""The `cyserve` command as users run it: `cyserve serve` as a real subprocess, `cyserve generate`
against it, `cyserve tokenize` offline, and the failure modes (bad model, bad input, no server)."""
from __future__ import annotations

import importlib.metadata
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import gguf
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_support import clean_env, cyserve_command

from cyserve.service.config import default_model_path
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 120.0
RUN_TIMEOUT = 180.0
SECRET_PROMPT = "Zebra-quokka secret prompt 4817"


def run_cli(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cyserve_command(), *args], cwd=REPO, env=clean_env(), capture_output=True,
        text=True, encoding="utf-8", timeout=timeout,
    )


class ServeProcess:
    """`cyserve serve --port 0` in a subprocess; its JSON log lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*cyserve_command(), "serve", "--port", "0", "--grace", "2", "--kv-cache-bytes", "64MiB",
             "--metrics-port", "0", *args],  # metrics off: servers here run side by side
            cwd=REPO, env=clean_env(**(env or {})), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, encoding="utf-8",
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        started = self.wait_for_event("server.started", STARTUP_TIMEOUT)
        assert started is not None, f"server did not start:\n{self.stderr}"
        self.address = started["address"]

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def events(self) -> list[dict]:
        parsed = []
        for line in list(self.lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # e.g. gRPC core's own messages
            if isinstance(record, dict):
                parsed.append(record)
        return parsed

    def wait_for_event(self, event: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == event]
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                self._reader.join(5)
                found = [e for e in self.events() if e.get("event") == event]
                return found[-1] if found else None
            time.sleep(0.05)
        return None

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(5)


@pytest.fixture(scope="module")
def served() -> Iterator[ServeProcess]:
    server = ServeProcess()
    try:
        yield server
    finally:
        server.terminate()


def test_console_script_is_declared():
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="cyserve")
    assert entry.value == "cyserve.service.cli:main"


def test_generate_chat_answers_paris(served):
    result = run_cli(
        "generate", "--chat", "--temperature", "0", "--max-tokens", "32",
        "--address", served.address, "What is the capital of France? Answer in one sentence.",
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_generate_prints_what_the_server_generates(served):
    prompt = "The three primary colors are"
    result = run_cli(
        "generate", "--temperature", "0", "--max-tokens", "10", "--address", served.address,
        "-v", prompt,
    )
    assert result.returncode == 0, result.stderr
    with grpc.insecure_channel(served.address) as channel:
        expected = pb_grpc.GenerationStub(channel).Generate(
            pb.GenerateRequest(
                prompt=prompt,
                sampling=pb.SamplingParams(temperature=0),
                stopping=pb.StoppingCriteria(max_tokens=10),
            ),
            timeout=RUN_TIMEOUT,
        )
    assert result.stdout.rstrip("\n") == expected.text.rstrip("\n")
    assert "finish_reason=FINISH_REASON_" in result.stderr
    assert f"completion_tokens={expected.usage.completion_tokens}" in result.stderr


def test_requests_are_logged_as_json_without_prompt_text(served):
    result = run_cli(
        "generate", "--max-tokens", "2", "--address", served.address, SECRET_PROMPT
    )
    assert result.returncode == 0, result.stderr
    finished = served.wait_for_event("request.finished", 30)
    assert finished is not None and finished["outcome"] == "ok"
    assert finished["completion_tokens"] == 2 and finished["prompt_tokens"] > 0
    received = [e for e in served.events() if e.get("event") == "request.received"]
    assert received and received[-1]["request_id"] == finished["request_id"]
    assert SECRET_PROMPT not in served.stderr


def test_generate_reports_invalid_argument_fields(served):
    result = run_cli("generate", "--top-p", "2", "--address", served.address, "hi")
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "sampling.top_p" in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_without_a_server_fails_clearly():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    result = run_cli("generate", "--address", f"127.0.0.1:{port}", "--timeout", "10", "hi")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr and "cyserve serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_tokenize_prints_the_model_tokenizer_ids():
    from cyserve.fastpath.tokenizer import Tokenizer

    text = "<|im_start|>user\nhé 12345 ∑ 🤗\t  x<|im_end|>\n"
    result = run_cli("tokenize", text)
    assert result.returncode == 0, result.stderr
    tokenizer = Tokenizer.from_gguf(gguf.GGUFReader(default_model_path()))
    assert json.loads(result.stdout) == list(tokenizer.encode(text, parse_special=True))
    assert json.loads(result.stdout)[0] == tokenizer.token_to_id("<|im_start|>")


@pytest.mark.parametrize("command", ["serve", "tokenize"])
def test_unloadable_model_is_one_line_and_exit_2(tmp_path, command):
    """One error line; `serve` logs (JSON) that it listens and loads before that line."""
    missing = tmp_path / "missing.gguf"
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 100)
    for path in (missing, garbage):
        args = ["serve", "--port", "0", "--metrics-port", "0"] if command == "serve" else ["tokenize", "hi"]
        result = run_cli(*args, "--model", str(path), timeout=60)
        assert result.returncode == 2, result.stderr
        *logged, error = result.stderr.strip().splitlines()
        assert error.startswith("cyserve: error: ") and str(path) in error, result.stderr
        assert "Traceback" not in result.stderr
        events = [json.loads(line)["event"] for line in logged]
        assert events == (["server.loading"] if command == "serve" else []), result.stderr


def test_bad_flag_value_from_environment_exits_2():
    env = clean_env() | {"CYSERVE_PORT": "not-a-port"}
    result = subprocess.run(
        [*cyserve_command(), "serve"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "CYSERVE_PORT" in result.stderr


def test_sigterm_drains_in_flight_streams_and_exits_0():
    """SIGTERM: health NOT_SERVING at once, new generations UNAVAILABLE, the stream in flight
    runs to its end within the grace period, exit 0."""
    server = ServeProcess("--grace", str(RUN_TIMEOUT))  # the last --grace wins
    num_tokens = 40
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GenerationStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="cyserve.v1.Generation"), timeout=RUN_TIMEOUT)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            stream = stub.GenerateStream(pb.GenerateRequest(
                prompt="Count to a thousand:",
                sampling=pb.SamplingParams(temperature=0),
                stopping=pb.StoppingCriteria(max_tokens=num_tokens, ignore_eos=True),
            ), timeout=RUN_TIMEOUT)
            first = next(stream)
            server.proc.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            with pytest.raises(grpc.RpcError) as refused:
                stub.Generate(pb.GenerateRequest(prompt="hi"), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            rest = list(stream)
        assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert sum(len(m.token_ids) for m in [first, *rest]) == num_tokens
        assert server.proc.wait(RUN_TIMEOUT) == 0, server.stderr
    finally:
        server.terminate()
    events = [e.get("event") for e in server.events()]
    assert events.index("server.stopping") < events.index("server.stopped")


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_examples() -> list[tuple[list[str], str]]:
    """The README's `cyserve ...  # streams: TEXT` and `# [ids], ...` lines: argv and what it says."""
    import shlex

    examples = []
    for line in README.read_text().splitlines():
        if not line.startswith("cyserve ") or "#" not in line:
            continue
        command, comment = line.split("#", 1)
        said = comment.strip()
        if said.startswith("streams:"):
            examples.append((shlex.split(command)[1:], said.removeprefix("streams:").strip()))
        elif said.startswith("["):
            examples.append((shlex.split(command)[1:], said[:said.index("]") + 1]))
    return examples


def test_readme_examples_print_what_the_readme_says(served):
    examples = _readme_examples()
    assert len(examples) >= 2, "the README's examples with their output were not found"
    for argv, said in examples:
        if argv[0] == "generate":
            argv = [*argv, "--address", served.address]
        result = run_cli(*argv)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == said, f"cyserve {' '.join(argv)}"


@pytest.mark.parametrize("quantize", ["", "q8_0"], ids=["as-stored", "q8_0"])
def test_serves_a_hugging_face_directory_with_its_chat_template(smollm2_hf_dir, quantize):
    """`cyserve serve --model DIR`: the safetensors checkpoint, its tokenizer.json and its
    chat_template.jinja, as the GGUF of the same weights would be served."""
    server = ServeProcess("--model", smollm2_hf_dir, *(["--quantize", quantize] if quantize else []))
    try:
        with grpc.insecure_channel(server.address) as channel:
            info = pb_grpc.GenerationStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        assert info.architecture == "llama" and info.num_layers == 30
        assert info.quantization == (quantize.upper() or "F32")
        assert "<|im_start|>" in info.chat_template
        result = run_cli("generate", "--chat", "--temperature", "0", "--max-tokens", "24",
                         "--address", server.address, "What is the capital of France? Answer in one sentence.")
        assert result.returncode == 0, result.stderr
        assert "Paris" in result.stdout
    finally:
        assert server.terminate() == 0
