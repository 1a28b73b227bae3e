"""Continuous-batching scheduler: which sequences run this step, and how many tokens each.

Each step fills a token budget under a sequence cap: running sequences first (decodes and the
rest of chunked prefills, oldest first), then waiting ones in arrival order. A sequence's new
tokens are those whose K/V are not yet computed, so decode, chunked prefill and recompute after
preemption are one mechanism. When blocks run out, the newest running sequence is preempted: its
blocks are freed and it waits again at the front of the queue, to be recomputed.
"""
from collections import deque
from dataclasses import dataclass

from cyserve.fastpath.block_allocator cimport BlockAllocator
from cyserve.fastpath.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSequence:
    seq: object  # Sequence
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the sequence's last token, so a next token is sampled."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list
    preempted: list

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


cdef class Scheduler:
    cdef readonly BlockAllocator allocator
    cdef readonly int max_num_seqs
    cdef readonly int max_num_batched_tokens
    cdef readonly object waiting   # deque[Sequence]
    cdef readonly list running     # list[Sequence], oldest first
    cdef readonly long num_preemptions

    def __init__(self, BlockAllocator allocator, int max_num_seqs, int max_num_batched_tokens):
        if max_num_seqs <= 0 or max_num_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        self.allocator = allocator
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting = deque()
        self.running = []
        self.num_preemptions = 0

    def add(self, seq) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    cdef int _blocks_short(self, seq, int num_new_tokens):
        need = self.allocator.blocks_needed(seq.num_computed_tokens + num_new_tokens)
        return need - len(seq.block_ids)

    cdef bint _grow(self, seq, int num_new_tokens):
        short = self._blocks_short(seq, num_new_tokens)
        if short <= 0:
            return True
        got = self.allocator.allocate(short)
        if got is None:
            return False
        seq.block_ids.extend(got)
        return True

    def _preempt(self, seq) -> None:
        self.allocator.free(seq.block_ids)
        seq.block_ids = []
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> SchedulerOutput:
        cdef int budget = self.max_num_batched_tokens
        cdef int n
        scheduled = []
        preempted = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            while not self._grow(seq, n):
                victim = self.running.pop()  # newest first
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.status != SequenceStatus.RUNNING:
                continue  # seq preempted itself; the loop index now points past the end
            scheduled.append(ScheduledSequence(seq, n))
            budget -= n
            i += 1
        # A sequence preempted this step waits for the next: admitting it now would thrash.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq in preempted:
                break
            n = min(seq.num_uncomputed_tokens, budget)
            if not self._grow(seq, n):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSequence(seq, n))
            budget -= n
        return SchedulerOutput(scheduled, preempted)

    def finish(self, seq) -> None:
        """Remove a sequence that ended (finished, aborted or failed) and return its blocks."""
        if seq.status == SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status == SequenceStatus.WAITING:
            self.waiting.remove(seq)
        else:
            return
        self.allocator.free(seq.block_ids)
        seq.block_ids = []
        seq.status = SequenceStatus.FINISHED

    def find(self, str request_id):
        for seq in self.running:
            if seq.request_id == request_id:
                return seq
        for seq in self.waiting:
            if seq.request_id == request_id:
                return seq
        return None

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)
