"""A server without a working grammar library: constrained requests get FAILED_PRECONDITION
naming the `structured` extra, Capabilities stop listing constraint kinds, and unconstrained
requests are served as before.

The library is taken away from the server subprocess only, through a directory put first on its
PYTHONPATH: "absent" hides it as if it were not installed (a sitecustomize that sets
sys.modules["xgrammar"] = None, which find_spec reports as not found and import refuses);
"broken" shadows it with an `xgrammar` package whose import raises ImportError, as an install
with a missing or mismatched dependency does."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from server_support import checkout_pythonpath
from service.test_cli import ServeProcess

from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

S, T, C = pb.SamplingParams, pb.StoppingCriteria, pb.OutputConstraint

SHADOWS = {
    "absent": ("sitecustomize.py", 'import sys\nsys.modules["xgrammar"] = None\n'),
    "broken": ("xgrammar/__init__.py", 'raise ImportError("libxgrammar_bindings.so: cannot open shared object file")\n'),
}


@pytest.fixture(scope="module", params=list(SHADOWS))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    shadow = tmp_path_factory.mktemp(f"no-xgrammar-{request.param}")
    name, source = SHADOWS[request.param]
    (shadow / name).parent.mkdir(parents=True, exist_ok=True)
    (shadow / name).write_text(source)
    server = ServeProcess(env={"PYTHONPATH": os.pathsep.join((str(shadow), checkout_pythonpath()))})
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def stub(served: ServeProcess) -> Iterator[pb_grpc.GenerationStub]:
    with grpc.insecure_channel(served.address) as channel:
        yield pb_grpc.GenerationStub(channel)


def _request(constraint: pb.OutputConstraint | None = None) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="A person as JSON.")],
                              sampling=S(temperature=0, constraint=constraint), stopping=T(max_tokens=8))


@pytest.mark.parametrize("constraint", [
    C(json_schema=json.dumps({"type": "object"})), C(regex="[0-9]+"), C(choice=pb.ChoiceList(choices=["a", "b"])),
], ids=["json_schema", "regex", "choice"])
def test_a_constrained_request_is_failed_precondition_naming_the_extra(stub, constraint):
    for call in (stub.Generate, lambda r, timeout: list(stub.GenerateStream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as err:
            call(_request(constraint), timeout=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value
        assert "cyserve[structured]" in err.value.details()


def test_capabilities_list_no_constraint_kinds_once_the_library_is_known_missing(stub):
    with pytest.raises(grpc.RpcError):
        stub.Generate(_request(C(regex="x")), timeout=60)
    caps = stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert list(caps.constraint_kinds) == []


def test_unconstrained_requests_are_still_served(stub):
    response = stub.Generate(_request(), timeout=120)
    assert response.finish_reason in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH)
    assert response.usage.completion_tokens >= 1 and response.text


def test_the_shadow_reached_only_the_server(served):
    # This process still has the real library: only the subprocess had it taken away.
    import importlib.util

    spec = importlib.util.find_spec("xgrammar")
    assert spec is not None and Path(spec.origin).parent.name == "xgrammar" and "no-xgrammar" not in spec.origin
