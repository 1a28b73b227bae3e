"""The engine: one dedicated thread running schedule -> forward -> sample -> output, step by step.

The asyncio side calls `generate()` (an async iterator of RequestOutput) and `abort()`. Requests
join and leave between steps (continuous batching). Outputs go back to the caller's event loop with
`loop.call_soon_threadsafe`, once per step per loop. Kernels release the GIL, so the event loop keeps
serving while the engine computes.
"""
from __future__ import annotations

import asyncio
import collections
import threading
from dataclasses import dataclass
from typing import AsyncIterator

import structlog

from cyserve.fastpath.block_allocator import BlockAllocator
from cyserve.fastpath.errors import EngineStoppedError, InvalidRequestError, ModelLoadError
from cyserve.fastpath.gguf_model import GGUFModel, load_gguf
from cyserve.fastpath.model_runner import ModelRunner, build_inputs
from cyserve.fastpath.output_processor import SequenceOutputState
from cyserve.fastpath.request import EngineRequest, FinishReason, RequestOutput
from cyserve.fastpath.sampler import sample, seed_state
from cyserve.fastpath.scheduler import Scheduler
from cyserve.fastpath.sequence import Sequence
from cyserve.fastpath.tokenizer import Tokenizer
from cyserve.kernels.cpu import threads

log = structlog.get_logger("cyserve.engine")

DEFAULT_KV_CACHE_BYTES_CAP = 1 << 30


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    num_threads: int = 0  # 0 = the cores this process may use (affinity mask, cgroup quota)
    block_size: int = 16
    kv_cache_bytes: int = 0  # 0 = min(1 GiB, a quarter of available memory)
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int = 0  # 0 = the model's context length, capped by the KV cache


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    architecture: str
    vocab_size: int
    context_length: int
    max_model_len: int
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    quantization: str
    bos_token_id: int
    eos_token_id: int
    chat_template: str


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    num_preemptions: int


def _available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def _kv_budget(cfg: EngineConfig) -> int:
    if cfg.kv_cache_bytes > 0:
        return cfg.kv_cache_bytes
    return min(DEFAULT_KV_CACHE_BYTES_CAP, _available_memory_bytes() // 4)


class _Subscriber:
    """Where one request's outputs go: its event loop and queue."""

    __slots__ = ("loop", "queue", "state")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, state: SequenceOutputState) -> None:
        self.loop, self.queue, self.state = loop, queue, state


class Engine:
    def __init__(self, config: EngineConfig, model: GGUFModel, tokenizer: Tokenizer) -> None:
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        threads.set_num_threads(config.num_threads or threads.default_num_threads())
        block_bytes = ModelRunner.kv_bytes_per_block(model, config.block_size)
        budget = _kv_budget(config)
        num_blocks = budget // block_bytes
        if num_blocks < 1:
            raise ModelLoadError(model.path, f"kv_cache_bytes={budget} is less than one KV block "
                                 f"({block_bytes} bytes): raise --kv-cache-bytes")
        capacity = num_blocks * config.block_size
        ctx = model.config.context_length
        self.max_model_len = min(config.max_model_len or ctx, ctx, capacity)
        self.allocator = BlockAllocator(num_blocks, config.block_size)
        self.scheduler = Scheduler(self.allocator, config.max_num_seqs, config.max_num_batched_tokens)
        self.runner = ModelRunner(model, num_blocks, config.block_size)
        self.eos_token_ids = frozenset(t for t in (tokenizer.eos_token_id, tokenizer.token_to_id("<|endoftext|>"),
                                                   tokenizer.token_to_id("<|eot_id|>")) if t is not None)
        self.model_info = self._model_info()
        self._inbox: collections.deque = collections.deque()  # ("add", seq, sub) | ("abort", id)
        self._wakeup = threading.Condition()
        self._subscribers: dict[str, _Subscriber] = {}
        self._arrivals = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        log.info("kv_cache", blocks=num_blocks, tokens=capacity, bytes=num_blocks * block_bytes,
                 block_size=config.block_size, max_model_len=self.max_model_len)

    @classmethod
    def from_config(cls, config: EngineConfig) -> "Engine":
        model = load_gguf(config.model_path)
        try:
            tokenizer = Tokenizer.from_gguf(model.reader)
        except ValueError as exc:
            raise ModelLoadError(config.model_path, f"tokenizer: {exc}") from exc
        return cls(config, model, tokenizer)

    def _model_info(self) -> ModelInfo:
        cfg = self.model.config
        field = self.model.reader.fields.get("tokenizer.chat_template")
        return ModelInfo(
            name=cfg.name, path=self.model.path, architecture=cfg.architecture, vocab_size=cfg.vocab_size,
            context_length=cfg.context_length, max_model_len=self.max_model_len, num_layers=cfg.num_layers,
            hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
            quantization=cfg.file_type, bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id, chat_template=str(field.contents()) if field else "",
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

    def stats(self) -> EngineStats:
        return EngineStats(self.scheduler.num_running, self.scheduler.num_waiting,
                           self.allocator.num_free_blocks, self.allocator.num_blocks,
                           self.scheduler.num_preemptions)

    # ---- the asyncio side ------------------------------------------------------------------

    def _make_sequence(self, req: EngineRequest) -> Sequence:
        n = len(req.prompt_token_ids)
        if n == 0:
            raise InvalidRequestError("prompt", "is empty: give at least one token of prompt")
        vocab = self.model.config.vocab_size
        bad = next((t for t in req.prompt_token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError("prompt_token_ids", f"token id {bad} is outside the vocabulary 0..{vocab - 1}")
        if n >= self.max_model_len:
            raise InvalidRequestError(
                "prompt", f"is {n} tokens; this server's limit is {self.max_model_len} tokens "
                "including at least one generated token: shorten the prompt")
        if req.stopping.max_tokens < 1:
            raise InvalidRequestError("stopping.max_tokens", "must be at least 1")
        self._arrivals += 1
        return Sequence(
            request=req, arrival_index=self._arrivals, token_ids=list(req.prompt_token_ids),
            num_prompt_tokens=n, max_len=min(n + req.stopping.max_tokens, self.max_model_len),
            rng_state=seed_state(req.sampling.seed),
        )

    async def generate(self, req: EngineRequest) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs; leaving the loop early (or being cancelled) aborts it."""
        if self._stopping:
            raise EngineStoppedError("the engine is shutting down; retry on another replica")
        if req.request_id in self._subscribers:
            raise InvalidRequestError("request_id", f"{req.request_id!r} is already in flight; use a unique id")
        seq = self._make_sequence(req)
        queue: asyncio.Queue = asyncio.Queue()
        sub = _Subscriber(asyncio.get_running_loop(), queue, SequenceOutputState(seq, self.tokenizer, self.eos_token_ids))
        self._subscribers[req.request_id] = sub
        self._post(("add", seq, sub))
        finished = False
        try:
            while True:
                out = await queue.get()
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
            else:
                seq = self.scheduler.find(item[1])
                if seq is not None:
                    self.scheduler.finish(seq)
                    self._emit(batch, seq, RequestOutput(seq.request_id, [], "", True, FinishReason.CANCELLED,
                                                         num_prompt_tokens=seq.num_prompt_tokens,
                                                         num_completion_tokens=seq.num_output_tokens))

    def _step(self, batch: dict) -> None:
        out = self.scheduler.schedule()
        if not out.scheduled:
            return
        wants = [s.samples for s in out.scheduled]
        items = [(s.seq.token_ids, s.seq.num_computed_tokens, s.num_new_tokens, s.seq.block_ids, w)
                 for s, w in zip(out.scheduled, wants)]
        try:
            logits = self.runner.forward(build_inputs(items, self.allocator.block_size))
        except Exception as exc:  # a kernel rejected the batch: fail it, keep serving
            log.exception("forward_failed", num_seqs=len(items))
            for s in out.scheduled:
                self.scheduler.finish(s.seq)
                self._emit(batch, s.seq, exc)
            return
        for s in out.scheduled:
            s.seq.num_computed_tokens += s.num_new_tokens
        sampling = [s.seq for s, w in zip(out.scheduled, wants) if w]
        for seq, token in zip(sampling, sample(logits, sampling)):
            seq.token_ids.append(token)
            sub = self._subscribers.get(seq.request_id)
            result = sub.state.on_token(token)
            if result.finished:
                self.scheduler.finish(seq)
            self._emit(batch, seq, result)

    def _fail_all(self, exc: Exception, batch: dict) -> None:
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self.scheduler.finish(seq)
            self._emit(batch, seq, exc)

    def _emit(self, batch: dict, seq: Sequence, item) -> None:
        sub = self._subscribers.get(seq.request_id)
        if sub is None:
            return
        if isinstance(item, Exception) or item.finished:
            del self._subscribers[seq.request_id]
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
