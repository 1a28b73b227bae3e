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
import time
from dataclasses import dataclass
from typing import AsyncIterator

import structlog

from cyserve.fastpath import sampler as host_sampler
from cyserve.fastpath.block_allocator import BlockAllocator
from cyserve.fastpath.errors import EngineStoppedError, InvalidRequestError, ModelLoadError
from cyserve.fastpath.gguf_model import GGUFModel, load_gguf
from cyserve.fastpath.host_memory import available_memory_bytes
from cyserve.fastpath.kv_cache_manager import KVCacheManager
from cyserve.fastpath.model_runner import LogitRows, ModelRunner, build_inputs
from cyserve.fastpath.output_processor import SequenceOutputState
from cyserve.fastpath.request import EngineRequest, FinishReason, PromptLogprobs, RequestOutput, RequestTimings
from cyserve.fastpath.sampler import seed_state
from cyserve.fastpath.scheduler import Scheduler
from cyserve.fastpath.sequence import Sequence
from cyserve.fastpath.tokenizer import Tokenizer
from cyserve.kernels.cpu import threads
from cyserve.kernels.cuda import DEVICES, CudaUnavailableError, select_device  # noqa: F401 (DEVICES: for the service)

log = structlog.get_logger("cyserve.engine")

DEFAULT_KV_CACHE_BYTES_CAP = 1 << 30
DEFAULT_KV_MEMORY_FRACTION = 4  # by default the cache takes at most 1/4 of the memory available
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    num_threads: int = 0  # 0 = the cores this process may use (affinity mask, cgroup quota)
    block_size: int = 16
    kv_cache_bytes: int = 0  # 0 = see default_kv_cache_bytes() (CPU), gpu_kv_cache_bytes() (GPU)
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512  # tokens per step: decodes first, then chunks of prefills
    max_model_len: int = 0  # 0 = the model's context length, capped by the KV cache
    enable_prefix_caching: bool = True
    device: str = "auto"  # one of DEVICES; auto = cuda when torch sees a GPU and the extension is built
    # On a GPU: the share of the device's memory that may be in use (by anyone) once the KV cache
    # is allocated, as vLLM's --gpu-memory-utilization; ignored when kv_cache_bytes is set.
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    # On a GPU: replay decode steps as CUDA graphs (cuda_graphs.py). Off until a GPU run has
    # checked them against the eager pass (docs/cuda.md).
    cuda_graphs: bool = False


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
    num_free_blocks: int  # blocks no request holds (prefix-cached ones included: reused on demand)
    num_total_blocks: int
    num_preemptions: int = 0
    num_used_blocks: int = 0
    num_cached_blocks: int = 0  # blocks (used or free) a request with the same prefix can share
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens whose K/V came from the cache
    num_steps: int = 0
    num_scheduled_tokens_last_step: int = 0
    num_scheduled_tokens_total: int = 0  # / num_steps = mean tokens per step
    block_size: int = 16


def _full_contexts_bytes(cfg: EngineConfig, bytes_per_token: int, context_length: int) -> int:
    """The most KV cache the engine can use: max_num_seqs sequences at full length."""
    return cfg.max_num_seqs * (cfg.max_model_len or context_length) * bytes_per_token


def default_kv_cache_bytes(cfg: EngineConfig, bytes_per_token: int, context_length: int) -> int:
    """A quarter of the available memory, at most 1 GiB, and no more than max_num_seqs full contexts."""
    want = _full_contexts_bytes(cfg, bytes_per_token, context_length)
    return max(min(DEFAULT_KV_CACHE_BYTES_CAP, available_memory_bytes() // DEFAULT_KV_MEMORY_FRACTION, want), 1)


def gpu_kv_cache_bytes(cfg: EngineConfig, bytes_per_token: int, context_length: int, free: int, total: int,
                       step_bytes: int) -> int:
    """The GPU's KV budget: what keeps the device's memory in use (weights, other processes,
    everything `free` already excludes) under gpu_memory_utilization once one full-size step's
    activations (`step_bytes`) are also in; no more than max_num_seqs full contexts; 0 if none fits."""
    headroom = int(total * cfg.gpu_memory_utilization) - (total - free) - step_bytes
    return max(min(_full_contexts_bytes(cfg, bytes_per_token, context_length), headroom), 0)


class _Subscriber:
    """Where one request's outputs go: its event loop and queue, its text state and timings, and
    its prompt logprobs while they accumulate over prefill chunks (None: none asked, or sent)."""

    __slots__ = ("loop", "queue", "state", "timings", "prompt_logprobs")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, state: SequenceOutputState) -> None:
        self.loop, self.queue, self.state = loop, queue, state
        self.timings = RequestTimings(arrival=time.monotonic())
        wanted = state.seq.request.sampling.prompt_logprobs is not None
        self.prompt_logprobs: PromptLogprobs | None = PromptLogprobs() if wanted else None


class Engine:
    def __init__(self, config: EngineConfig, model: GGUFModel, tokenizer: Tokenizer) -> None:
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        threads.set_num_threads(config.num_threads or threads.default_num_threads())
        try:
            self.device = select_device(config.device)
        except (CudaUnavailableError, ValueError) as exc:
            raise ModelLoadError(model.path, str(exc)) from exc
        self.block_size = config.block_size
        num_blocks = self._make_runner()
        self.allocator = BlockAllocator(num_blocks, config.block_size, config.enable_prefix_caching)
        self.kv = KVCacheManager(self.allocator)
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens)
        self.eos_token_ids = frozenset(t for t in (tokenizer.eos_token_id, tokenizer.token_to_id("<|endoftext|>"),
                                                   tokenizer.token_to_id("<|eot_id|>")) if t is not None)
        self.model_info = self._model_info()
        self._inbox: collections.deque = collections.deque()  # ("add", seq, sub) | ("abort", id)
        self._wakeup = threading.Condition()
        self._subscribers: dict[str, _Subscriber] = {}
        self._arrivals = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def _check_sizes(self) -> None:
        cfg = self.config
        if cfg.block_size < 1 or cfg.max_num_seqs < 1 or cfg.max_num_batched_tokens < 1:
            raise ModelLoadError(self.model.path, "block_size, max_num_seqs and max_num_batched_tokens must be >= 1")
        if not 0.0 < cfg.gpu_memory_utilization <= 1.0:
            raise ModelLoadError(self.model.path, f"gpu_memory_utilization={cfg.gpu_memory_utilization} must be "
                                 "in (0, 1]: the share of the GPU's memory cyserve may fill")

    def _size_kv_cache(self, device_budget=None) -> int:
        """Blocks from the byte budget; sets max_model_len (never above what the cache holds).
        device_budget(bytes_per_token, context_length) -> (bytes, why) replaces the host-memory
        default (the GPU's free memory) when kv_cache_bytes is not given."""
        cfg, model = self.config, self.model
        block_bytes = ModelRunner.kv_bytes_per_block(model, cfg.block_size)
        ctx = model.config.context_length
        if cfg.kv_cache_bytes:
            budget, why = cfg.kv_cache_bytes, "raise --kv-cache-bytes"
        elif device_budget is not None:
            budget, why = device_budget(block_bytes // cfg.block_size, ctx)
        else:
            budget, why = default_kv_cache_bytes(cfg, block_bytes // cfg.block_size, ctx), "raise --kv-cache-bytes"
        num_blocks = budget // block_bytes
        if num_blocks < 1:
            raise ModelLoadError(model.path, f"kv_cache_bytes={budget} is less than one KV block "
                                 f"({block_bytes} bytes): {why}")
        capacity = num_blocks * cfg.block_size
        if cfg.max_model_len > ctx:
            raise ModelLoadError(model.path, f"max_model_len={cfg.max_model_len} exceeds the model's context "
                                 f"length {ctx}")
        if cfg.max_model_len > capacity:
            raise ModelLoadError(model.path, f"max_model_len={cfg.max_model_len} needs more KV cache than "
                                 f"kv_cache_bytes={budget} holds ({capacity} tokens): raise --kv-cache-bytes "
                                 "or lower --max-model-len")
        self.max_model_len = cfg.max_model_len or min(ctx, capacity)
        log.info("kv_cache", blocks=num_blocks, tokens=capacity, bytes=num_blocks * block_bytes,
                 block_size=cfg.block_size, max_model_len=self.max_model_len,
                 prefix_caching=cfg.enable_prefix_caching, max_num_seqs=cfg.max_num_seqs,
                 max_num_batched_tokens=cfg.max_num_batched_tokens)
        return num_blocks

    def _make_runner(self) -> int:
        """Sets the runner and its sampler and returns the KV cache's blocks: the CPU kernels'
        runner with the host sampler, or the torch runner with the device sampler on the GPU, whose
        cache is sized from the device memory left after its weights. Same interface, same block ids."""
        self._check_sizes()
        cfg = self.config
        log.info("device", device=self.device)
        if self.device == "cpu":
            num_blocks = self._size_kv_cache()
            # the work buffers are sized for the step's token budget once, never grown mid-run
            self.runner = ModelRunner(self.model, num_blocks, cfg.block_size, max_num_tokens=cfg.max_num_batched_tokens)
            self.sampler = host_sampler
            return num_blocks
        return self._make_torch_runner(self.device)

    def _make_torch_runner(self, device: str) -> int:
        """The GPU path (on any torch device): weights first, then a step measured, then the KV
        cache in what is left."""
        # torch is imported here only: GPU deployments
        from cyserve.fastpath.device_sampler import DeviceSampler
        from cyserve.fastpath.torch_runner import TorchModelRunner

        runner = TorchModelRunner(self.model, 0, self.config.block_size, device=device)
        self.runner, self.sampler = runner, DeviceSampler(runner.device)
        num_blocks = self._size_kv_cache(self._gpu_budget)
        runner.allocate_kv_cache(num_blocks)
        if self.config.cuda_graphs:
            self._capture_graphs(runner)
        return num_blocks

    def _capture_graphs(self, runner) -> None:
        cfg = self.config
        max_blocks = -(-self.max_model_len // cfg.block_size)
        try:
            sizes = runner.capture_decode_graphs(cfg.max_num_seqs, max_blocks)
        except RuntimeError as exc:
            raise ModelLoadError(self.model.path, f"capturing the decode CUDA graphs failed ({exc}); "
                                 "serve without --cuda-graphs") from exc
        log.info("cuda_graphs", batch_sizes=sizes, max_blocks_per_seq=max_blocks)

    def _gpu_budget(self, bytes_per_token: int, context_length: int) -> tuple[int, str]:
        """gpu_kv_cache_bytes() from a measured full-size step and the device's free memory now."""
        cfg = self.config
        step = self.runner.measure_step_bytes(cfg.max_num_batched_tokens, cfg.max_num_batched_tokens)
        if cfg.cuda_graphs:  # the graphs keep a decode step's activations for good, beside the eager steps'
            step *= 2
        step += self.sampler.workspace_bytes(cfg.max_num_seqs, self.model.config.vocab_size)
        free, total = self.runner.device_memory()
        budget = gpu_kv_cache_bytes(cfg, bytes_per_token, context_length, free, total, step)
        log.info("gpu_memory", free=free, total=total, step_bytes=step, kv_budget=budget,
                 gpu_memory_utilization=cfg.gpu_memory_utilization)
        why = (f"the GPU has {free >> 20} MiB free of {total >> 20} MiB and a step needs {step >> 20} MiB; "
               f"raise --gpu-memory-utilization (now {cfg.gpu_memory_utilization}), free the GPU, "
               "or lower --max-num-batched-tokens")
        return budget, why

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
        """A snapshot of the counters (read without locking: each is one machine word)."""
        s, a, kv = self.scheduler, self.allocator, self.kv
        return EngineStats(
            num_running=s.num_running, num_waiting=s.num_waiting, num_free_blocks=a.num_free_blocks,
            num_total_blocks=a.num_blocks, num_preemptions=s.num_preemptions, num_used_blocks=a.num_used_blocks,
            num_cached_blocks=a.num_cached_blocks, prefix_cache_queries=kv.prefix_cache_queries,
            prefix_cache_hits=kv.prefix_cache_hits, num_steps=s.num_steps,
            num_scheduled_tokens_last_step=s.last_num_scheduled_tokens,
            num_scheduled_tokens_total=s.num_scheduled_tokens_total, block_size=a.block_size,
        )

    # ---- the asyncio side ------------------------------------------------------------------

    def _make_sequence(self, req: EngineRequest) -> Sequence:
        n = len(req.prompt_token_ids)
        if n == 0:
            raise InvalidRequestError("prompt", "is empty: give at least one token of prompt")
        vocab = self.model.config.vocab_size
        bad = next((t for t in req.prompt_token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError("prompt_token_ids", f"token id {bad} is outside the vocabulary 0..{vocab - 1}")
        bad = next((t for t, _ in req.sampling.logit_bias if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError("sampling.logit_bias", f"token id {bad} is outside the vocabulary 0..{vocab - 1}")
        if n >= self.max_model_len:
            raise InvalidRequestError(
                "prompt", f"is {n} tokens; this server's limit is {self.max_model_len} tokens "
                "including at least one generated token: shorten the prompt")
        if req.stopping.max_tokens < 1:
            raise InvalidRequestError("stopping.max_tokens", "must be at least 1")
        if req.sampling.prompt_logprobs is not None and req.sampling.prompt_logprobs < 0:
            raise InvalidRequestError("sampling.prompt_logprobs", "must be >= 0 (or None for none)")
        if not -(2**31) <= req.priority < 2**31:
            raise InvalidRequestError("priority", "must fit in a signed 32-bit integer")
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
                continue
            seq = self.scheduler.abort(item[1])
            if seq is not None:
                self._emit(batch, seq, RequestOutput(seq.request_id, [], "", True, FinishReason.CANCELLED,
                                                     num_prompt_tokens=seq.num_prompt_tokens,
                                                     num_completion_tokens=seq.num_output_tokens,
                                                     num_cached_tokens=seq.num_cached_tokens))

    def _step(self, batch: dict) -> None:
        out = self.scheduler.schedule()
        now = time.monotonic()
        self._note_scheduled(out, now)
        if not out.scheduled:
            return
        items = [(s.token_ids, s.num_computed_tokens, s.num_scheduled_tokens, s.block_ids, self._logit_rows(s))
                 for s in out.scheduled]
        logprobs: list = []  # per sampled row: None or (logprob, top alternatives)
        try:
            inputs = build_inputs(items, self.block_size)
            logits = self.runner.forward(inputs)
            if any(item[4] == LogitRows.ALL for item in items):
                logits = self._score_prompts(out.scheduled, items, inputs.logits_start_loc, logits)
            tokens = self.sampler.sample(logits, out.sampling, self.eos_token_ids, logprobs)
        except Exception as exc:  # a kernel rejected the batch, or the device ran out of memory: fail it, keep serving
            log.exception("forward_failed", num_seqs=len(items))
            for seq in out.scheduled:
                self.scheduler.finish(seq)
                self._emit(batch, seq, exc)
            return
        self.scheduler.update(out)
        now = time.monotonic()
        for seq, token, token_logprobs in zip(out.sampling, tokens, logprobs):
            seq.token_ids.append(token)
            sub = self._subscribers.get(seq.request_id)
            if sub is None:  # nobody listens any more (cannot happen while generate() holds it)
                self.scheduler.finish(seq)
                continue
            if not sub.timings.first_token:
                sub.timings.first_token = now
            result = sub.state.on_token(token)
            result.num_cached_tokens = seq.num_cached_tokens
            if token_logprobs is not None:
                result.logprobs = [token_logprobs]
            if sub.prompt_logprobs is not None:  # complete once the prompt's last row is sampled
                result.prompt_logprobs, sub.prompt_logprobs = sub.prompt_logprobs, None
            if result.finished:
                self.scheduler.finish(seq)
            self._emit(batch, seq, result)

    def _logit_rows(self, seq: Sequence) -> LogitRows:
        """ALL while the sequence's prompt logprobs lack rows this chunk computes; else the sampling
        row when the chunk ends at its last token."""
        sub = self._subscribers.get(seq.request_id)
        if sub is not None and sub.prompt_logprobs is not None and seq.num_computed_tokens < seq.num_prompt_tokens - 1:
            return LogitRows.ALL
        return LogitRows.LAST if seq.num_computed_tokens + seq.num_scheduled_tokens == len(seq.token_ids) else LogitRows.NONE

    def _score_prompts(self, scheduled: list, items: list, logits_start_loc, logits):
        """Append this chunk's prompt logprobs to each ALL sequence's; returns the logits of the
        sampling rows only (one per sequence of `out.sampling`, in order), as sample() wants them.
        Row position p scores prompt token p + 1; rows already scored (a chunk recomputed after
        preemption) are skipped."""
        sampling_rows = []
        for i, seq in enumerate(scheduled):
            lo, hi = int(logits_start_loc[i]), int(logits_start_loc[i + 1])
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + seq.num_scheduled_tokens
            if hi > lo and end == len(seq.token_ids):
                sampling_rows.append(hi - 1)
            sub = self._subscribers.get(seq.request_id)
            if items[i][4] != LogitRows.ALL or sub is None or sub.prompt_logprobs is None:
                continue
            acc = sub.prompt_logprobs
            first, last = len(acc), min(end, seq.num_prompt_tokens - 1)  # row positions [first, last)
            if first < start:
                raise RuntimeError(f"prompt logprobs of {seq.request_id!r} miss rows {first}..{start - 1}")
            if last <= first:
                continue
            targets = seq.token_ids[first + 1:last + 1]
            lp, top_ids, top_lp = self.sampler.rows_logprobs(logits[lo + first - start:lo + last - start], targets,
                                                             seq.request.sampling.prompt_logprobs)
            acc.token_ids.extend(targets)
            acc.logprobs.extend(lp.tolist())
            acc.top_ids.extend(top_ids.tolist())
            acc.top_logprobs.extend(top_lp.tolist())
        return logits[sampling_rows]

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
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self.scheduler.finish(seq)
            self._emit(batch, seq, exc)

    def _emit(self, batch: dict, seq: Sequence, item) -> None:
        sub = self._subscribers.get(seq.request_id)
        if sub is None:
            return
        if isinstance(item, Exception) or item.finished:
            del self._subscribers[seq.request_id]
            if not isinstance(item, Exception):
                sub.timings.finished = time.monotonic()
                item.timings = sub.timings
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
