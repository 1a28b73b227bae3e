"""The engine: one dedicated thread running schedule -> execute -> outputs, step by step, and the
bridge to asyncio.

The asyncio side calls `generate()` (an async iterator of RequestOutput) and `abort()`. Requests
join and leave between steps (continuous batching). Each step the scheduler picks the batch, the
runner (runner_setup.py: CPU or torch) executes it and returns token ids, and the output processor
turns them into text and stop decisions. Outputs go back to the caller's event loop with
`loop.call_soon_threadsafe`, once per step per loop. Kernels release the GIL, so the event loop
keeps serving while the engine computes. The engine implements contract.EngineClient.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import AsyncIterator

import structlog

from cyserve.fastpath.contract import EngineStats, ModelInfo
from cyserve.fastpath.core.block_allocator import BlockAllocator
from cyserve.fastpath.core.kv_cache_manager import KVCacheManager
from cyserve.fastpath.core.output_processor import SequenceOutputState
from cyserve.fastpath.core.request import EngineRequest, FinishReason, PromptLogprobs, RequestOutput, RequestTimings
from cyserve.fastpath.core.request_checks import new_sequence
from cyserve.fastpath.core.scheduler import Scheduler
from cyserve.fastpath.core.sequence import Sequence
from cyserve.fastpath.engine_config import EngineConfig
from cyserve.fastpath.errors import EngineStoppedError, InvalidRequestError, ModelLoadError
from cyserve.fastpath.model.chat_templates import chat_template
from cyserve.fastpath.model.cpu_sampler import seed_state
from cyserve.fastpath.loading import load_model
from cyserve.fastpath.model.runner import RunnerOutput
from cyserve.fastpath.model.weights import ModelWeights
from cyserve.fastpath.runner_setup import RunnerSetup, make_runner
from cyserve.fastpath.structured.grammars import GrammarCache
from cyserve.fastpath.tokenizer import Tokenizer
from cyserve.kernels.cpu import threads
from cyserve.kernels.cuda import CudaUnavailableError, select_device

log = structlog.get_logger("cyserve.engine")


class _Subscriber:
    """Where one request's outputs go: its event loop and queue, its text state and timings, and
    its prompt logprobs while they accumulate over prefill chunks (None: none asked, or sent).
    `num_sent` (engine thread) and `num_taken` (event loop) count outputs each side has handled:
    their difference is what the caller has not read yet; past max_unsent_outputs the sequence
    is parked until the caller catches up."""

    __slots__ = ("loop", "queue", "state", "timings", "prompt_logprobs", "num_sent", "num_taken", "parked")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, state: SequenceOutputState) -> None:
        self.loop, self.queue, self.state = loop, queue, state
        self.num_sent = self.num_taken = 0
        self.parked = False
        self.timings = RequestTimings(arrival=time.monotonic())
        wanted = state.seq.request.sampling.prompt_logprobs is not None
        self.prompt_logprobs: PromptLogprobs | None = PromptLogprobs() if wanted else None


class Engine:
    def __init__(self, config: EngineConfig, model: ModelWeights, tokenizer: Tokenizer) -> None:
        try:
            config.check()
            self.device = select_device(config.device)
        except (CudaUnavailableError, ValueError) as exc:
            raise ModelLoadError(model.path, str(exc)) from exc
        self.config, self.model, self.tokenizer = config, model, tokenizer
        threads.set_num_threads(config.num_threads or threads.default_num_threads())
        self.block_size = config.block_size
        setup = self._make_runner()
        self.runner, self.max_model_len = setup.runner, setup.max_model_len
        self.allocator = BlockAllocator(setup.num_blocks, config.block_size, config.enable_prefix_caching)
        self.kv = KVCacheManager(self.allocator)
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens)
        # the tokenizer's end-of-generation ids (eos, eot, eom, <end_of_turn>, <|im_end|>, ...) and
        # the checkpoint's own (HF generation_config)
        self.eos_token_ids = frozenset(t for t in (tokenizer.eos_token_id, *tokenizer.eog_token_ids,
                                                   *model.end_token_ids)
                                       if t is not None)
        self.model_info = self._model_info()
        self.grammars = GrammarCache(tokenizer, model.config.vocab_size, self.eos_token_ids)
        self._inbox: collections.deque = collections.deque()  # ("add", seq, sub) | ("abort" | "resume", id)
        self._wakeup = threading.Condition()
        self._subscribers: dict[str, _Subscriber] = {}
        self._arrivals = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def _make_runner(self) -> RunnerSetup:
        return make_runner(self.config, self.model, self.device)

    @classmethod
    def from_config(cls, config: EngineConfig) -> "Engine":
        if not config.model_path:
            raise ModelLoadError("", "no model path: pass --model (or set CYSERVE_MODEL)")
        model, tokenizer = load_model(config.model_path, config.quantize)
        return cls(config, model, tokenizer)

    def _model_info(self) -> ModelInfo:
        cfg = self.model.config
        return ModelInfo(
            name=cfg.name, path=self.model.path, architecture=cfg.architecture, vocab_size=cfg.vocab_size,
            context_length=cfg.context_length, max_model_len=self.max_model_len, num_layers=cfg.num_layers,
            hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
            quantization=cfg.file_type, bos_token_id=_id_or_none(self.tokenizer.bos_token_id),
            eos_token_id=_id_or_none(self.tokenizer.eos_token_id),
            chat_template=chat_template(self.model.chat_template, cfg.architecture, self.config.chat_template),
            head_dim=cfg.head_dim, tensor_types=cfg.tensor_types,
            default_sampling=self.model.default_sampling,
        )

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cyserve-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking requests, fail those still in flight with EngineStoppedError, join the thread."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.grammars.close()

    def stats(self) -> EngineStats:
        """A snapshot of the counters (read without locking: each is one machine word)."""
        s, a, kv = self.scheduler, self.allocator, self.kv
        return EngineStats(
            num_running=s.num_running, num_waiting=s.num_waiting, num_free_blocks=a.num_free_blocks,
            num_total_blocks=a.num_blocks, num_preemptions=s.num_preemptions, num_used_blocks=a.num_used_blocks,
            num_cached_blocks=a.num_cached_blocks, prefix_cache_queries=kv.prefix_cache_queries,
            prefix_cache_hits=kv.prefix_cache_hits, num_steps=s.num_steps,
            num_scheduled_tokens_last_step=s.last_num_scheduled_tokens,
            num_scheduled_tokens_total=s.num_scheduled_tokens_total, block_size=a.block_size,
            num_parked=s.num_parked,
        )

    # ---- the asyncio side ------------------------------------------------------------------

    def _make_sequence(self, req: EngineRequest) -> Sequence:
        seq = new_sequence(req, self._arrivals + 1, self.model.config.vocab_size, self.max_model_len,
                           seed_state(req.sampling.seed))
        self._arrivals += 1
        return seq

    async def generate(self, req: EngineRequest) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs; leaving the loop early (or being cancelled) aborts it."""
        if self._stopping:
            raise EngineStoppedError("the engine is shutting down; retry on another replica")
        if req.request_id in self._subscribers:
            raise InvalidRequestError("request_id", f"{req.request_id!r} is already in flight; use a unique id")
        seq = self._make_sequence(req)
        if req.constraint is not None:  # compiled on the grammar pool (cached), then a matcher of its own
            seq.matcher = (await self.grammars.compile_async(req.constraint)).new_matcher()
            if self._stopping:
                raise EngineStoppedError("the engine is shutting down; retry on another replica")
            if req.request_id in self._subscribers:
                raise InvalidRequestError("request_id", f"{req.request_id!r} is already in flight; use a unique id")
        queue: asyncio.Queue = asyncio.Queue()
        sub = _Subscriber(asyncio.get_running_loop(), queue, SequenceOutputState(seq, self.tokenizer, self.eos_token_ids))
        self._subscribers[req.request_id] = sub
        self._post(("add", seq, sub))
        finished = False
        try:
            while True:
                out = await queue.get()
                sub.num_taken += 1
                if sub.parked and sub.num_sent - sub.num_taken <= self.config.max_unsent_outputs // 2:
                    sub.parked = False
                    self._post(("resume", req.request_id))
                if isinstance(out, Exception):
                    finished = True
                    raise out
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            if not finished:
                self.abort(req.request_id)

    def abort(self, request_id: str) -> None:
        """Abort from any thread; takes effect before the next step and frees the request's blocks."""
        self._post(("abort", request_id))

    def _post(self, item: tuple) -> None:
        with self._wakeup:
            self._inbox.append(item)
            self._wakeup.notify()

    # ---- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._inbox and not self.scheduler.has_work() and not self._stopping:
                    self._wakeup.wait()
                items = list(self._inbox)
                self._inbox.clear()
                stopping = self._stopping
            batch: dict = collections.defaultdict(list)
            self._apply_inbox(items, batch)
            if stopping:
                self._fail_all(EngineStoppedError("the engine stopped before this request finished"), batch)
                self._deliver(batch)
                return
            if self.scheduler.has_work():
                self._step(batch)
            self._deliver(batch)

    def _apply_inbox(self, items: list, batch: dict) -> None:
        for item in items:
            if item[0] == "add":
                self.scheduler.add(item[1])
                continue
            if item[0] == "resume":  # its caller read enough of what it had not taken
                sub = self._subscribers.get(item[1])
                if sub is not None:
                    self.scheduler.unpark(sub.state.seq)
                continue
            seq = self.scheduler.abort(item[1])
            if seq is not None:
                self._emit(batch, seq, RequestOutput(seq.request_id, [], "", True, FinishReason.CANCELLED,
                                                     num_prompt_tokens=seq.num_prompt_tokens,
                                                     num_completion_tokens=seq.num_output_tokens,
                                                     num_cached_tokens=seq.num_cached_tokens))

    def _step(self, batch: dict) -> None:
        out = self.scheduler.schedule()
        self._note_scheduled(out, time.monotonic())
        if not out.scheduled:
            return
        try:
            result = self.runner.execute(out, self.eos_token_ids)
        except Exception as exc:  # a kernel rejected the batch, or the device ran out of memory: fail it, keep serving
            log.exception("forward_failed", num_seqs=len(out.scheduled))
            for seq in out.scheduled:
                self.scheduler.finish(seq)
                self._emit(batch, seq, exc)
            return
        self.scheduler.update(out)
        self._add_prompt_logprobs(out.scheduled, result)
        now = time.monotonic()
        for seq, token, token_logprobs in zip(out.sampling, result.token_ids, result.logprobs):
            seq.token_ids.append(token)
            sub = self._subscribers.get(seq.request_id)
            if sub is None:  # nobody listens any more (cannot happen while generate() holds it)
                self.scheduler.finish(seq)
                continue
            if not sub.timings.first_token:
                sub.timings.first_token = now
            output = sub.state.on_token(token)
            output.num_cached_tokens = seq.num_cached_tokens
            if token_logprobs is not None:
                output.logprobs = [token_logprobs]
            if sub.prompt_logprobs is not None:  # complete once the prompt's last row is sampled
                output.prompt_logprobs, sub.prompt_logprobs = sub.prompt_logprobs, None
            if output.finished:
                self.scheduler.finish(seq)
            self._emit(batch, seq, output)
            if not output.finished and sub.num_sent - sub.num_taken >= self.config.max_unsent_outputs:
                self.scheduler.park(seq)  # nobody reads: no compute, no blocks, until they do
                sub.parked = True

    def _add_prompt_logprobs(self, scheduled: list, result: RunnerOutput) -> None:
        """Append the rows the runner scored to each request's prompt logprobs."""
        if not result.prompt_logprobs:
            return
        for seq in scheduled:
            chunk = result.prompt_logprobs.get(seq.request_id)
            if chunk is None:
                continue
            seq.num_scored_prompt_rows += len(chunk)
            sub = self._subscribers.get(seq.request_id)
            if sub is None or sub.prompt_logprobs is None:
                continue
            acc = sub.prompt_logprobs
            acc.token_ids.extend(chunk.token_ids)
            acc.logprobs.extend(chunk.logprobs)
            acc.top_ids.extend(chunk.top_ids)
            acc.top_logprobs.extend(chunk.top_logprobs)

    def _note_scheduled(self, out, now: float) -> None:
        """Timestamps for the service's traces: first scheduled, prefill chunks, preemptions."""
        for seq in out.preempted:
            sub = self._subscribers.get(seq.request_id)
            if sub is not None:
                sub.timings.preemptions.append(now)
        for seq in out.scheduled:
            if seq.num_computed_tokens + seq.num_scheduled_tokens <= seq.num_prompt_tokens:
                sub = self._subscribers.get(seq.request_id)
                if sub is not None:
                    sub.timings.num_prefill_chunks += 1
                    if not sub.timings.first_scheduled:
                        sub.timings.first_scheduled = now
                        sub.timings.num_cached_prompt_tokens = seq.num_cached_tokens

    def _fail_all(self, exc: Exception, batch: dict) -> None:
        for sub in list(self._subscribers.values()):  # running, waiting and parked alike
            self.scheduler.finish(sub.state.seq)
            self._emit(batch, sub.state.seq, exc)

    def _emit(self, batch: dict, seq: Sequence, item) -> None:
        sub = self._subscribers.get(seq.request_id)
        if sub is None:
            return
        if isinstance(item, Exception) or item.finished:
            del self._subscribers[seq.request_id]
            if not isinstance(item, Exception):
                sub.timings.finished = time.monotonic()
                item.timings = sub.timings
        sub.num_sent += 1
        seq.request.generated.count = seq.num_output_tokens
        batch[sub.loop].append((sub.queue, item))

    @staticmethod
    def _deliver(batch: dict) -> None:
        for loop, pairs in batch.items():
            try:
                loop.call_soon_threadsafe(_put_all, pairs)
            except RuntimeError:
                pass  # that event loop is closed: its callers are gone


def _put_all(pairs: list) -> None:
    for queue, item in pairs:
        queue.put_nowait(item)


def _id_or_none(token_id: int | None) -> int:
    return -1 if token_id is None else token_id
