"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader from npm) streams a generation from a real
server using protos/ as is: proof that a non-Python stub works. Skipped only without node/npm."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"
PROTOS = Path(__file__).parents[2] / "protos"


@pytest.fixture(scope="module")
def node_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the Node.js client test needs them")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        env = dict(os.environ, npm_config_cache=str(NODE_DIR / ".npm-cache"))
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm install failed:\n{done.stderr}"
    return NODE_DIR / "client.js"


def test_node_client_streams_a_generation(node_client, api, api_stub):
    from cyserve.v1 import generation_pb2 as pb

    done = subprocess.run(["node", str(node_client), api.address, str(PROTOS)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = api_stub.Generate(pb.GenerateRequest(prompt="The capital of France is", sampling=pb.SamplingParams(
        temperature=0), stopping=pb.StoppingCriteria(max_tokens=8)), timeout=120)
    assert result["text"] == expected.text and result["tokens"] == len(expected.token_ids)
    assert result["logprobs"] == result["tokens"] and result["max_tokens"] == 8
    assert result["finish"]["reason"] == pb.FinishReason.Name(expected.finish_reason)
    assert int(result["finish"]["usage"]["completion_tokens"]) == expected.usage.completion_tokens
