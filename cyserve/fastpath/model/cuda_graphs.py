"""The decode step as CUDA graphs: one per padded batch size, replayed instead of launched.

A decode step of a 30-layer model is ~300 kernel launches issued from Python; for a small model
that host work, not the GPU, bounds decode speed. A CUDA graph records the launches once and
replays them with one call. Graphs fix every shape and address, so:

* a decode batch (every sequence one new token, its logits wanted) of S rows is padded to the
  next captured size b >= S. Padding rows are token 0 at position 0 of a one-token context with
  slot -1 (the cache kernel skips it: nothing is written) and a block table of zeros (reads of
  block 0, finite whatever it holds), so they cannot disturb the real rows, which are independent;
* block tables are padded to the widest a sequence can need (max_model_len / block_size);
* the inputs live in one static device buffer, refreshed each step by one host-to-device copy
  from a pinned host buffer of the same layout, and the logits land in a static output that the
  caller gets a copy of (the next replay overwrites it).

Batches that are not decode-only (a prefill chunk, prompt logprobs) run eagerly as before.
`padded_decode_inputs` and `StaticInputs` work on any device and are tested on the CPU through the
eager pass (tests/cuda/test_decode_padding.py); the capture and replay need a GPU.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from cyserve.fastpath.model.batch import BatchInputs

# The sizes captured below 8, then every multiple of 8 (as vLLM does): padding wastes < 8 rows.
SMALL_BATCH_SIZES = (1, 2, 4)
BATCH_SIZE_STEP = 8
WARMUP_RUNS = 2  # eager runs before capture: cuBLAS picks and caches its kernels outside the graph


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """The padded batch sizes to capture: 1, 2, 4, then multiples of 8, up to the first >= max_num_seqs."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    sizes: list[int] = []
    size = SMALL_BATCH_SIZES[0]
    while not sizes or sizes[-1] < max_num_seqs:
        sizes.append(size)
        size = size * 2 if size < SMALL_BATCH_SIZES[-1] else (size // BATCH_SIZE_STEP + 1) * BATCH_SIZE_STEP
    return sizes


def is_decode_batch(inputs: BatchInputs) -> bool:
    """Every sequence has exactly one new token and wants its logits, in order."""
    num_seqs = inputs.context_lens.shape[0]
    return (inputs.token_ids.shape[0] == num_seqs and inputs.logits_indices.shape[0] == num_seqs
            and np.array_equal(inputs.query_start_loc, np.arange(num_seqs + 1))
            and np.array_equal(inputs.logits_indices, np.arange(num_seqs)))


def padded_decode_inputs(inputs: BatchInputs, size: int, max_blocks: int) -> BatchInputs:
    """A decode batch of S <= size rows as a batch of exactly `size` rows with block tables
    max_blocks wide; rows S.. are padding that writes nothing and reads only block 0."""
    if not _fits(inputs, size, max_blocks):
        raise ValueError(f"not a decode batch that fits {size} rows x {max_blocks} blocks")
    return _padded(inputs, size, max_blocks)


def _fits(inputs: BatchInputs, size: int, max_blocks: int) -> bool:
    return (inputs.context_lens.shape[0] <= size and inputs.block_tables.shape[1] <= max_blocks
            and is_decode_batch(inputs))


def _padded(inputs: BatchInputs, size: int, max_blocks: int) -> BatchInputs:
    """padded_decode_inputs without its checks (the caller made them)."""
    num_seqs = inputs.context_lens.shape[0]
    width = inputs.block_tables.shape[1]

    def padded(values: np.ndarray, fill: int) -> np.ndarray:
        out = np.full(size, fill, dtype=np.int32)
        out[:num_seqs] = values
        return out

    tables = np.zeros((size, max_blocks), dtype=np.int32)
    tables[:num_seqs, :width] = inputs.block_tables
    return BatchInputs(
        token_ids=padded(inputs.token_ids, 0),
        positions=padded(inputs.positions, 0),
        slot_mapping=padded(inputs.slot_mapping, -1),
        block_tables=tables,
        query_start_loc=np.arange(size + 1, dtype=np.int32),
        context_lens=padded(inputs.context_lens, 1),
        logits_indices=np.arange(size, dtype=np.int64),
        logits_start_loc=np.arange(size + 1, dtype=np.int32),
    )


class StaticInputs:
    """The inputs of a padded decode batch of any captured size in one flat int32 buffer on the
    device (the vectors, each as long as the largest size, then the block tables), so a graph
    captured on its views sees each step's batch after one host-to-device copy. Any device: the
    layout is checked on the CPU."""

    VECTORS = ("token_ids", "positions", "slot_mapping", "query_start_loc", "context_lens", "logits_indices")

    def __init__(self, max_size: int, max_blocks: int, device: torch.device) -> None:
        self.max_blocks = max_blocks
        self._lengths = {name: max_size + (name == "query_start_loc") for name in self.VECTORS}
        self._tables_at = sum(self._lengths.values())
        total = self._tables_at + max_size * max_blocks
        on_gpu = device.type == "cuda"
        self._host = torch.zeros(total, dtype=torch.int32)
        if on_gpu:
            self._host = self._host.pin_memory()  # so the copy runs asynchronously
        self._static = torch.zeros(total, dtype=torch.int32, device=device)
        self._copied = torch.cuda.Event() if on_gpu else None  # the last copy out of the pinned buffer

    def _views(self, buf: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
        views, at = {}, 0
        for name in self.VECTORS:
            views[name] = buf[at:at + size + (name == "query_start_loc")]
            at += self._lengths[name]
        views["block_tables"] = buf[self._tables_at:self._tables_at + size * self.max_blocks].view(size, self.max_blocks)
        return views

    def args(self, size: int) -> tuple[torch.Tensor, ...]:
        """The device views for `size` rows, in the runner's forward argument order."""
        v = self._views(self._static, size)
        return (v["token_ids"], v["positions"], v["slot_mapping"], v["block_tables"], v["query_start_loc"],
                v["context_lens"], v["logits_indices"])

    def load(self, padded: BatchInputs) -> None:
        """Stage a padded batch (from padded_decode_inputs) in the host buffer, then one copy."""
        size = padded.token_ids.shape[0]
        if self._copied is not None:
            self._copied.synchronize()  # the previous step's copy may still be reading the pinned buffer
        host = self._views(self._host, size)
        for name in (*self.VECTORS, "block_tables"):
            host[name].numpy()[...] = getattr(padded, name)
        end = self._tables_at + size * self.max_blocks
        self._static[:end].copy_(self._host[:end], non_blocking=True)
        if self._copied is not None:
            self._copied.record()


class DecodeGraphs:
    """Captured decode steps of one runner, replayed for decode batches that fit."""

    def __init__(self, forward: Callable[..., torch.Tensor], device: torch.device, max_num_seqs: int,
                 max_blocks: int) -> None:
        """`forward(token_ids, positions, slot_mapping, block_tables, query_start_loc, context_lens,
        logits_indices) -> logits` is the runner's pass on device tensors."""
        self.forward, self.device, self.max_blocks = forward, device, max_blocks
        self.batch_sizes = graph_batch_sizes(max_num_seqs)
        self.inputs = StaticInputs(self.batch_sizes[-1], max_blocks, device)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.num_replays = 0

    @torch.inference_mode()
    def capture(self) -> None:
        """Record one graph per batch size, largest first, all in one memory pool."""
        pool = torch.cuda.graph_pool_handle()
        empty = BatchInputs(token_ids=np.zeros(0, np.int32), positions=np.zeros(0, np.int32),
                            slot_mapping=np.zeros(0, np.int32), block_tables=np.zeros((0, 1), np.int32),
                            query_start_loc=np.zeros(1, np.int32), context_lens=np.zeros(0, np.int32),
                            logits_indices=np.zeros(0, np.int64))
        for size in sorted(self.batch_sizes, reverse=True):
            # all padding: the warm-up and the capture write nothing to the cache
            self.inputs.load(padded_decode_inputs(empty, size, self.max_blocks))
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.forward(*self.inputs.args(size))
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self.forward(*self.inputs.args(size))
            self._graphs[size] = (graph, logits)
        torch.cuda.synchronize(self.device)

    def replay(self, inputs: BatchInputs) -> torch.Tensor | None:
        """Logits f32[S, vocab] of a decode batch by graph replay, or None when the batch is not one
        a graph fits (not decode-only, too many rows, or wider block tables than captured)."""
        num_seqs = inputs.context_lens.shape[0]
        if not _fits(inputs, self.batch_sizes[-1], self.max_blocks):
            return None
        size = next(b for b in self.batch_sizes if b >= num_seqs)
        self.inputs.load(_padded(inputs, size, self.max_blocks))
        graph, logits = self._graphs[size]
        graph.replay()
        self.num_replays += 1
        return logits[:num_seqs].clone()  # the next replay overwrites the static output
