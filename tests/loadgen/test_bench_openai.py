"""The OpenAI backend and the whole `cyserve bench` command against a fake SSE server written
here (bench_fake_openai.py): streamed timings, usage, failures, --json, --sweep's table and plot,
and --spawn-llama-server with a stand-in llama-server executable."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench_fake_openai import MODEL_ID, FakeOpenAIServer, running_fake_server

from cyserve.loadgen.backends import GenerationOptions, OpenAIBackend, sse_data
from cyserve.loadgen.llama_server import LlamaServerConfig, command
from cyserve.loadgen.workload import SampleRequest
from cyserve.service.cli import main

FAKE_SERVER_SCRIPT = Path(__file__).with_name("bench_fake_openai.py")


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with running_fake_server() as server:
        yield server


def generate_one(base_url: str, request: SampleRequest):
    async def go():
        backend = OpenAIBackend(base_url, label="fake")
        try:
            await backend.wait_ready(10)
            return backend.model, await backend.generate(request, GenerationOptions())
        finally:
            await backend.close()

    return asyncio.run(go())


def test_sse_data_lines() -> None:
    assert sse_data('data: {"a": 1}') == '{"a": 1}'
    assert sse_data("data:[DONE]") == "[DONE]"
    assert sse_data("") is None and sse_data(": keep-alive") is None and sse_data("event: x") is None


def test_streamed_completion_is_timed(fake: FakeOpenAIServer) -> None:
    model, result = generate_one(fake.base_url, SampleRequest("one two three", 3, 7))
    assert model == MODEL_ID
    assert result.success, result.error
    assert result.output_tokens == 7  # from the usage chunk
    assert len(result.itl) == 6  # seven text chunks: six gaps; the empty final chunk is no token
    assert 0 < result.ttft <= result.latency
    assert all(gap >= 0 for gap in result.itl)
    sent = fake.completions[0]
    assert sent["stream"] is True and sent["ignore_eos"] is True
    assert sent["max_tokens"] == 7 and sent["model"] == MODEL_ID and sent["prompt"] == "one two three"
    assert sent["temperature"] == 0.0


def test_http_error_is_a_failed_request(fake: FakeOpenAIServer) -> None:
    fake.fail_status = 503
    _, result = generate_one(fake.base_url, SampleRequest("x", 1, 3))
    assert not result.success and "HTTP 503" in result.error and "slots busy" in result.error


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(["bench", "--no-progress", "--num-warmups", "1", *args])
    return status, capsys.readouterr().out


def test_cli_json_against_openai_server(fake: FakeOpenAIServer, capsys) -> None:
    status, out = run_cli(
        capsys, "--backend", "openai", "--base-url", fake.base_url, "--concurrency", "3",
        "--num-requests", "6", "--input-len", "12", "--output-len", "5", "--json",
    )
    assert status == 0
    report = json.loads(out)
    assert report["completed"] == 6 and report["failed"] == 0
    assert report["total_output_tokens"] == 30 and report["total_input_tokens"] == 6 * 12
    assert report["output_throughput"] > 0 and report["request_throughput"] > 0
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        dist = report[key]
        assert 0 < dist["p50"] <= dist["p99"], key
    assert report["ttft_ms"]["p50"] <= report["e2el_ms"]["p50"]
    assert fake.max_in_flight <= 3
    measured = fake.completions[1:]  # the first was the warmup
    assert len(measured) == 6 and {len(c["prompt"].split()) for c in measured} == {12}


def test_cli_failures_exit_1(fake: FakeOpenAIServer, capsys) -> None:
    fake.fail_status = 500
    status, out = run_cli(capsys, "--backend", "openai", "--base-url", fake.base_url,
                          "--num-requests", "2", "--input-len", "4", "--output-len", "2")
    assert status == 1
    assert "Failed requests:" in out and "HTTP 500" in out


def test_cli_usage_errors_exit_2(capsys) -> None:
    assert main(["bench", "--backend", "openai"]) == 2
    assert "--base-url" in capsys.readouterr().err
    assert main(["bench", "--sweep", "1,4", "--concurrency", "2"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "--sweep", "1,x"])


def test_unreachable_server_exits_1(capsys) -> None:
    status = main(["bench", "--backend", "openai", "--base-url", "http://127.0.0.1:9",
                   "--ready-timeout", "0.5", "--no-progress"])
    assert status == 1
    assert "no OpenAI-compatible server ready" in capsys.readouterr().err


@pytest.fixture
def fake_llama_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An executable that runs the fake server and records the flags it was given."""
    binary = tmp_path / "llama-server"
    binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVER_SCRIPT}" "$@"\n')
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    args_file = tmp_path / "llama-args.json"
    monkeypatch.setenv("FAKE_LLAMA_ARGS_FILE", str(args_file))
    return binary, args_file


def test_sweep_with_spawned_llama_server(
    fake: FakeOpenAIServer, fake_llama_server: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    binary, args_file = fake_llama_server
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    out_dir = tmp_path / "results"
    status, out = run_cli(
        capsys, "--backend", "openai", "--base-url", fake.base_url, "--label", "first",
        "--sweep", "1,2", "--num-requests", "4", "--input-len", "8", "--output-len", "4",
        "--spawn-llama-server", "--llama-server", str(binary), "--model", str(model),
        "--threads", "2", "--output-dir", str(out_dir),
    )
    assert status == 0, out
    flags = json.loads(args_file.read_text())
    assert flags[flags.index("--model") + 1] == str(model)
    assert flags[flags.index("--threads") + 1] == "2"
    assert flags[flags.index("--parallel") + 1] == "2"  # the largest concurrency of the sweep
    assert int(flags[flags.index("--ctx-size") + 1]) >= 2 * (8 + 4)
    table = (out_dir / "sweep.md").read_text()
    for concurrency in (1, 2):
        for system in ("first", "llama.cpp"):
            assert f"| {concurrency} | {system} | 4 |" in table
    assert "first / llama.cpp: output tok/s" in table
    assert table in out or table.split("\n", 2)[2] in out
    points = json.loads((out_dir / "sweep.json").read_text())["points"]
    assert {(p["system"], p["concurrency"]) for p in points} == {
        ("first", 1), ("first", 2), ("llama.cpp", 1), ("llama.cpp", 2)}
    assert all(p["completed"] == 4 and p["total_output_tokens"] == 16 for p in points)
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    png = out_dir / "sweep.png"
    assert png.exists() == has_matplotlib
    if has_matplotlib:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_llama_server_command_splits_context_between_slots() -> None:
    config = LlamaServerConfig(model_path="/m.gguf", num_threads=3, parallel=4, ctx_per_slot=300)
    cmd = command("/bin/llama-server", config, port=8123)
    assert cmd[0] == "/bin/llama-server"
    pairs = dict(zip(cmd[1::2], cmd[2::2]))
    assert pairs["--ctx-size"] == "1200" and pairs["--parallel"] == "4"
    assert pairs["--threads"] == "3" and pairs["--threads-batch"] == "3"
    assert pairs["--port"] == "8123" and pairs["--model"] == "/m.gguf"


def test_missing_llama_server_is_a_clear_error(fake: FakeOpenAIServer, tmp_path: Path, capsys) -> None:
    status = main(["bench", "--backend", "openai", "--base-url", fake.base_url, "--no-progress",
                   "--spawn-llama-server", "--llama-server", str(tmp_path / "nope"),
                   "--model", str(tmp_path / "m.gguf")])
    assert status == 1
    assert "llama-server not found" in capsys.readouterr().err
    assert os.environ.get("FAKE_LLAMA_ARGS_FILE") is None
