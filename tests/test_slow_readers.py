"""A caller that does not read its stream costs neither compute nor KV memory: past
max_unsent_outputs the engine parks the sequence (blocks freed), resumes it when the caller
catches up, and the tokens are the ones an attentive caller gets. On a real server: a client that
stops reading stalls the server's writes, and the engine then parks the request."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from server_support import serving, wait_until
from telemetry.test_logging import logged  # noqa: F401  (the fixture)

from cyserve.fastpath.core.request import EngineRequest, SamplingParams, StoppingParams
from cyserve.fastpath.engine import Engine
from cyserve.fastpath.engine_config import EngineConfig
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

LIMIT = 8
PROMPT = "<|im_start|>user\nTell me a long story about a lighthouse.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def patient(model_path):
    eng = Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=64 << 20, max_unsent_outputs=LIMIT))
    eng.start()
    yield eng
    eng.stop()


def _request(engine: Engine, rid: str, max_tokens: int) -> EngineRequest:
    return EngineRequest(rid, engine.tokenizer.encode(PROMPT), SamplingParams(temperature=0.0),
                         StoppingParams(max_tokens=max_tokens, ignore_eos=True))


async def _read_all(engine: Engine, req: EngineRequest, stall_after: int = -1, stall_s: float = 0.0) -> tuple[list, dict]:
    """Every token of `req`; after `stall_after` outputs, stop reading for `stall_s` and note the
    engine's state at the end of the stall."""
    tokens, seen, during = [], 0, {}
    async for out in engine.generate(req):
        tokens.extend(out.new_token_ids)
        seen += 1
        if seen == stall_after:
            await asyncio.sleep(stall_s)
            stats = engine.stats()
            during = {"parked": stats.num_parked, "free": stats.num_free_blocks, "total": stats.num_total_blocks,
                      "steps": stats.num_steps}
            await asyncio.sleep(0.3)
            during["steps_later"] = engine.stats().num_steps
    return tokens, during


def test_an_unread_stream_is_parked_and_resumes_to_the_same_tokens(patient):
    attentive, _ = asyncio.run(_read_all(patient, _request(patient, "attentive", 120)))
    slow, during = asyncio.run(_read_all(patient, _request(patient, "slow", 120), stall_after=1, stall_s=1.5))
    assert during["parked"] == 1, "nobody read for 1.5 s: the sequence must be parked"
    assert during["free"] == during["total"], "a parked sequence holds no KV blocks"
    assert during["steps_later"] == during["steps"], "and gets no compute"
    assert len(slow) == 120 and slow == attentive
    stats = patient.stats()
    assert stats.num_parked == 0 and stats.num_free_blocks == stats.num_total_blocks


def test_aborting_a_parked_request_returns_everything(patient):
    async def main() -> None:
        stream = patient.generate(_request(patient, "abandoned", 400))
        await anext(stream)
        assert await asyncio.to_thread(wait_until, lambda: patient.stats().num_parked == 1)
        await stream.aclose()  # the caller goes away while parked
    asyncio.run(main())
    assert wait_until(lambda: patient.stats().num_parked == 0 and patient.stats().num_running == 0)
    stats = patient.stats()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_a_client_that_stops_reading_stops_the_generation(patient):
    with serving(patient) as server:
        # no BDP probing: the client's flow-control window stays small, so the server's writes stall
        with grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
            call = pb_grpc.GenerationStub(channel).GenerateStream(pb.GenerateRequest(
                prompt=PROMPT, sampling=pb.SamplingParams(temperature=0),
                stopping=pb.StoppingCriteria(max_tokens=1200, ignore_eos=True),
                output=pb.OutputOptions(logprobs=20)), timeout=120)
            first = next(call)
            assert wait_until(lambda: patient.stats().num_parked == 1, timeout=60), \
                "the engine kept generating for a client that reads nothing"
            steps = patient.stats().num_steps
            time.sleep(0.5)
            assert patient.stats().num_steps == steps
            stats = patient.stats()
            assert stats.num_free_blocks == stats.num_total_blocks
            received = len(first.token_ids) + sum(len(r.token_ids) for r in call)  # read it all: it resumes
            assert received == 1200
    stats = patient.stats()
    assert stats.num_parked == 0 and stats.num_free_blocks == stats.num_total_blocks


def test_usage_in_the_log_counts_what_was_generated_not_what_was_read(patient, logged):  # noqa: F811
    steps_before = patient.stats().num_steps
    with serving(patient) as server:
        with grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
            call = pb_grpc.GenerationStub(channel).GenerateStream(pb.GenerateRequest(
                prompt=PROMPT, request_id="left-early", sampling=pb.SamplingParams(temperature=0),
                stopping=pb.StoppingCriteria(max_tokens=1200, ignore_eos=True),
                output=pb.OutputOptions(logprobs=20)), timeout=120)
            received = len(next(call).token_ids)
            assert wait_until(lambda: patient.stats().num_parked == 1, timeout=60)
            generated = patient.stats().num_steps - steps_before  # alone, one token per step
            call.cancel()
            assert wait_until(lambda: "request.finished" in logged.events("left-early"))
    finished = logged.events("left-early")["request.finished"]
    assert finished["status"] == "CANCELLED"
    assert received < generated
    assert finished["completion_tokens"] == generated
    assert wait_until(lambda: patient.stats().num_running == 0 and patient.stats().num_parked == 0)
