"""A pure-Python reference of the scheduler, KV cache manager and block allocator: slow, obviously
correct, written from the policy rather than from the Cython code. Prefix-cache keys here are the
request's salt and its whole token prefix (no hashing), the free queue is a plain list, the queues
are re-sorted after every change. tests/test_scheduler.py runs it against the Cython scheduler on
random traces and demands identical decisions, block ids included."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class RefSeq:
    request_id: str
    arrival: int
    token_ids: list[int]
    max_len: int
    priority: int = 0
    salt: str | None = None
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    committed: int = 0
    scheduled: int = 0
    preempted_at: int = -1
    num_preemptions: int = 0
    cached_tokens: int = 0

    @property
    def urgency(self) -> tuple[int, int]:
        return (-self.priority, self.arrival)


class RefAllocator:
    def __init__(self, num_blocks: int, block_size: int, caching: bool) -> None:
        self.block_size = block_size
        self.caching = caching
        self.free_queue = list(range(num_blocks))  # allocate() takes from the front
        self.ref = [0] * num_blocks
        self.key: list = [None] * num_blocks
        self.cache: dict = {}

    def allocate(self, n: int) -> list[int] | None:
        if n > len(self.free_queue):
            return None
        out, self.free_queue = self.free_queue[:n], self.free_queue[n:]
        for b in out:
            if self.key[b] is not None:
                del self.cache[self.key[b]]
                self.key[b] = None
            self.ref[b] = 1
        return out

    def free(self, blocks: list[int]) -> None:
        for b in reversed(blocks):
            assert self.ref[b] > 0
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if self.key[b] is None:
                    self.free_queue.insert(0, b)  # empty blocks are reused before cached ones
                else:
                    self.free_queue.append(b)  # cached: least recently freed is evicted first

    def touch(self, b: int) -> None:
        if self.ref[b] == 0:
            self.free_queue.remove(b)
        self.ref[b] += 1


class RefKV:
    def __init__(self, alloc: RefAllocator) -> None:
        self.alloc = alloc
        self.bs = alloc.block_size
        self.queries = self.hits = 0

    def key(self, seq: RefSeq, k: int) -> tuple:
        return (seq.salt, tuple(seq.token_ids[: (k + 1) * self.bs]))

    def computed_blocks(self, seq: RefSeq) -> list[int]:
        hits: list[int] = []
        if not self.alloc.caching or seq.blocks:
            return hits
        for k in range((len(seq.token_ids) - 1) // self.bs):
            b = self.alloc.cache.get(self.key(seq, k))
            if b is None:
                break
            hits.append(b)
        return hits

    def allocate_slots(self, seq: RefSeq, n: int, hits: list[int] | None = None) -> bool:
        hits_n = len(hits) if hits else 0
        total = seq.num_computed + hits_n * self.bs + n
        need = max(-(-total // self.bs) - len(seq.blocks) - hits_n, 0)
        reclaimed = sum(self.alloc.ref[b] == 0 for b in hits or [])
        if need + reclaimed > len(self.alloc.free_queue):
            return False
        if hits is not None:
            for b in hits:
                self.alloc.touch(b)
            seq.blocks += hits
            seq.num_computed += hits_n * self.bs
            seq.committed = hits_n
            if seq.num_preemptions == 0 and self.alloc.caching:
                seq.cached_tokens = hits_n * self.bs
                self.queries += len(seq.token_ids)
                self.hits += hits_n * self.bs
        seq.blocks += self.alloc.allocate(need)
        return True

    def commit(self, seq: RefSeq) -> None:
        if not self.alloc.caching:
            return
        for k in range(seq.committed, seq.num_computed // self.bs):
            key = self.key(seq, k)
            if key not in self.alloc.cache:
                self.alloc.cache[key] = seq.blocks[k]
                self.alloc.key[seq.blocks[k]] = key
        seq.committed = max(seq.committed, seq.num_computed // self.bs)

    def release(self, seq: RefSeq) -> None:
        self.alloc.free(seq.blocks)
        seq.blocks, seq.committed = [], 0


class RefScheduler:
    def __init__(self, kv: RefKV, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.kv = kv
        self.max_seqs = max_num_seqs
        self.max_tokens = max_num_batched_tokens
        self.waiting: list[RefSeq] = []
        self.running: list[RefSeq] = []
        self.step = 0
        self.num_preemptions = 0

    def add(self, seq: RefSeq) -> None:
        self.waiting = sorted(self.waiting + [seq], key=lambda s: s.urgency)

    def schedule(self) -> tuple[list[tuple[str, int]], list[str]]:
        self.step += 1
        self.budget = self.max_tokens
        self.batch: list[RefSeq] = []
        self.preempted: list[RefSeq] = []
        for decodes in (True, False):
            self._running_pass(decodes)
        self._admit()
        return [(s.request_id, s.scheduled) for s in self.batch], [s.request_id for s in self.preempted]

    def _running_pass(self, decodes: bool) -> None:
        i = 0
        while i < len(self.running) and self.budget > 0:
            seq = self.running[i]
            i += 1
            left = len(seq.token_ids) - seq.num_computed
            if left <= 0 or seq.scheduled or (left == 1) != decodes:
                continue
            n = min(left, self.budget)
            while not self.kv.allocate_slots(seq, n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    return
            self._take(seq, n)

    def _admit(self) -> None:
        while self.waiting and self.budget > 0:
            seq = self.waiting[0]
            if seq.preempted_at == self.step:
                return
            outranks = bool(self.running) and seq.priority > self.running[-1].priority
            if len(self.running) >= self.max_seqs:
                if not outranks:
                    return
                self._preempt(self.running[-1])
                continue
            hits = self.kv.computed_blocks(seq)
            n = min(len(seq.token_ids) - len(hits) * self.kv.bs, self.budget)
            while not self.kv.allocate_slots(seq, n, hits):
                if not (self.running and seq.priority > self.running[-1].priority):
                    return
                self._preempt(self.running[-1])
            self.waiting.pop(0)
            self.running = sorted(self.running + [seq], key=lambda s: s.urgency)
            self._take(seq, n)

    def _take(self, seq: RefSeq, n: int) -> None:
        seq.scheduled = n
        self.budget -= n
        self.batch.append(seq)

    def _preempt(self, seq: RefSeq) -> None:
        self.running.remove(seq)
        if seq.scheduled:
            self.batch.remove(seq)
            self.budget += seq.scheduled
            seq.scheduled = 0
        self.kv.release(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.preempted_at = self.step
        self.add(seq)
        self.preempted.append(seq)
        self.num_preemptions += 1

    def update(self) -> list[RefSeq]:
        """After the pretend forward: tokens computed, blocks committed; returns those that sample."""
        sampling = []
        for seq in self.batch:
            if seq.num_computed + seq.scheduled == len(seq.token_ids):
                sampling.append(seq)
            seq.num_computed += seq.scheduled
            seq.scheduled = 0
            self.kv.commit(seq)
        return sampling

    def finish(self, seq: RefSeq) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        else:
            return
        self.kv.release(seq)
