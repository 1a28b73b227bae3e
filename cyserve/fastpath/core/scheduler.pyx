"""Continuous-batching scheduler: which sequences run this step, and how many tokens each.

Both queues are ordered by urgency: higher priority first, then arrival (FCFS). Each step fills a
token budget under a sequence cap: decodes of running sequences first (one token each, most urgent
first), then chunks of running prefills, then waiting sequences in order, each starting after its
longest prefix-cache hit. A sequence's new tokens are those whose K/V are not yet computed, so
decode, chunked prefill and recompute after preemption are one mechanism.

When blocks run out, the least urgent running sequence (lowest priority, newest) is preempted: its
blocks are freed and it waits again, to be recomputed (mostly from the prefix cache when its blocks
were not reused meanwhile). A waiting sequence of strictly higher priority may preempt running ones
to get in. The most urgent running sequence is never preempted for another, and the engine caps
every sequence at what the whole cache holds, so some sequence always makes progress; the head of
the waiting queue is never overtaken by a later one of its priority, so nobody waits forever
behind newcomers.

The scheduler never sees a tensor; it runs on the engine thread only (the engine queues aborts from
other threads and applies them between steps).
"""
from cyserve.fastpath.core.kv_cache_manager cimport KVCacheManager
from cyserve.fastpath.core.sequence cimport Sequence

from cyserve.fastpath.core.sequence import SequenceStatus

cdef int WAITING = SequenceStatus.WAITING
cdef int RUNNING = SequenceStatus.RUNNING
cdef int FINISHED = SequenceStatus.FINISHED
cdef int PARKED = SequenceStatus.PARKED

# A request with prompt logprobs gets logits for every prompt row (f32[rows, vocab]: 25 MB per 128
# rows at a 49,152-token vocabulary), so its prefill chunks are capped at this many tokens: the
# step's memory stays bounded whatever the token budget, and other requests keep their share of it.
cdef int PROMPT_LOGPROBS_MAX_CHUNK = 128


cdef inline bint _before(Sequence a, Sequence b) noexcept:
    """True when a is more urgent than b: higher priority, then earlier arrival."""
    return a.priority > b.priority or (a.priority == b.priority and a.arrival_index < b.arrival_index)


cdef Py_ssize_t _bisect(list queue, Sequence seq) noexcept:
    """The first position in an urgency-ordered queue whose sequence is not more urgent than seq."""
    cdef Py_ssize_t lo = 0, hi = len(queue), mid
    while lo < hi:
        mid = (lo + hi) // 2
        if _before(<Sequence> queue[mid], seq):
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline bint _wants_prompt_logprobs(Sequence seq):
    return getattr(getattr(seq.request, "sampling", None), "prompt_logprobs", None) is not None


cdef inline int _prefill_chunk(Sequence seq, int remaining, int budget) except -1:
    """Tokens of a prefill to schedule now: what is left, within the budget (and the cap above)."""
    cdef int n = remaining if remaining < budget else budget
    if n > PROMPT_LOGPROBS_MAX_CHUNK and seq.num_computed_tokens < seq.num_prompt_tokens \
            and _wants_prompt_logprobs(seq):
        n = PROMPT_LOGPROBS_MAX_CHUNK
    return n


cdef class SchedulerOutput:
    def __init__(self, long step=0):
        self.step = step
        self.scheduled = []
        self.preempted = []
        self.sampling = []
        self.num_scheduled_tokens = 0

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.request_id}:{s.num_scheduled_tokens}" for s in self.scheduled)
        return f"SchedulerOutput(step={self.step}, [{parts}], preempted={[s.request_id for s in self.preempted]})"


cdef class Scheduler:
    def __init__(self, KVCacheManager kv not None, int max_num_seqs, int max_num_batched_tokens):
        if max_num_seqs <= 0 or max_num_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        self.kv = kv
        self.block_size = kv.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting = []
        self.running = []
        self._by_id = {}
        self._out = None

    # ---- queues -----------------------------------------------------------------------------

    cdef int _insert(self, list queue, Sequence seq) except -1:
        cdef Py_ssize_t n = len(queue)
        if n == 0 or _before(<Sequence> queue[n - 1], seq):
            queue.append(seq)  # the common case: a newcomer of the lowest priority present
        else:
            queue.insert(_bisect(queue, seq), seq)
        return 0

    cdef Py_ssize_t _index(self, list queue, Sequence seq) except -1:
        """Position of seq in a queue (binary search: (priority, arrival) is unique per sequence)."""
        cdef Py_ssize_t lo = _bisect(queue, seq)
        if lo == len(queue) or queue[lo] is not seq:
            raise RuntimeError(f"{seq!r} is not where its queue's order puts it")
        return lo

    def add(self, Sequence seq not None) -> None:
        rid = seq.request.request_id
        if rid in self._by_id:
            raise ValueError(f"request {rid!r} is already scheduled")
        seq.status_code = WAITING
        self._by_id[rid] = seq
        self._insert(self.waiting, seq)

    def find(self, str request_id):
        return self._by_id.get(request_id)

    def has_work(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # ---- one step ---------------------------------------------------------------------------

    cpdef SchedulerOutput schedule(self):
        """Pick this step's batch. Call update() after the forward pass succeeded."""
        self.num_steps += 1
        cdef SchedulerOutput out = SchedulerOutput(self.num_steps)
        self._out = out
        self._budget = self.max_num_batched_tokens
        try:
            self._schedule_running(True)
            self._schedule_running(False)
            self._admit_waiting()
        finally:
            self._out = None
        cdef Sequence seq
        for seq in out.scheduled:
            if seq.ends_at_last_token():
                out.sampling.append(seq)
        out.num_scheduled_tokens = self.max_num_batched_tokens - self._budget
        self.last_num_scheduled_tokens = out.num_scheduled_tokens
        self.num_scheduled_tokens_total += out.num_scheduled_tokens
        return out

    cdef int _schedule_seq(self, Sequence seq, int n) except -1:
        seq.num_scheduled_tokens = n
        self._budget -= n
        self._out.scheduled.append(seq)
        return 0

    cdef int _schedule_running(self, bint decodes) except -1:
        """One pass over the running queue: its decodes, or the next chunks of its prefills."""
        cdef Py_ssize_t i = 0
        cdef int remaining, n
        cdef Sequence seq
        while i < len(self.running) and self._budget > 0:
            seq = <Sequence> self.running[i]
            i += 1
            remaining = seq.num_uncomputed()
            if remaining <= 0 or seq.num_scheduled_tokens or (remaining == 1) != decodes:
                continue
            n = 1 if decodes else _prefill_chunk(seq, remaining, self._budget)
            if not self._reserve(seq, n):
                break  # seq preempted itself: it was the last running sequence
            self._schedule_seq(seq, n)
        return 0

    cdef bint _reserve(self, Sequence seq, int n) except -1:
        """Blocks for n more tokens of a running seq, preempting from the end of the running queue
        until they fit. False when seq itself had to go."""
        cdef Sequence victim
        while not self.kv.allocate_slots(seq, n, None):
            victim = <Sequence> self.running[len(self.running) - 1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    cdef bint _outranks_last_running(self, Sequence seq) noexcept:
        return len(self.running) > 0 and seq.priority > (<Sequence> self.running[len(self.running) - 1]).priority

    cdef int _admit_waiting(self) except -1:
        cdef Sequence seq
        cdef list hits
        cdef int n
        while self.waiting and self._budget > 0:
            seq = <Sequence> self.waiting[0]
            if seq.preempted_at_step == self.num_steps:
                return 0  # re-admitting a sequence in the step that preempted it would thrash
            if len(self.running) >= self.max_num_seqs:
                if not self._outranks_last_running(seq):
                    return 0
                self._preempt(<Sequence> self.running[len(self.running) - 1])
                continue
            # Prompt logprobs need the logits of every prompt row, which a prefix-cache hit would
            # skip: such a request computes its whole prompt (its blocks still join the cache).
            hits = None if _wants_prompt_logprobs(seq) else self.kv.get_computed_blocks(seq)
            n = _prefill_chunk(seq, len(seq.token_ids) - (len(hits) * self.block_size if hits else 0),
                               self._budget)
            while not self.kv.allocate_slots(seq, n, hits):
                if not self._outranks_last_running(seq):
                    return 0  # the head waits; later arrivals do not overtake it
                self._preempt(<Sequence> self.running[len(self.running) - 1])
            del self.waiting[0]
            seq.status_code = RUNNING
            self._insert(self.running, seq)
            self._schedule_seq(seq, n)
        return 0

    cdef int _preempt(self, Sequence victim) except -1:
        del self.running[self._index(self.running, victim)]
        if victim.num_scheduled_tokens and self._out is not None:
            self._out.scheduled.remove(victim)
            self._budget += victim.num_scheduled_tokens
        victim.num_scheduled_tokens = 0
        self.kv.free(victim)
        victim.num_computed_tokens = 0
        victim.num_preemptions += 1
        victim.preempted_at_step = self.num_steps
        victim.status_code = WAITING
        self._insert(self.waiting, victim)
        if self._out is not None:
            self._out.preempted.append(victim)
        self.num_preemptions += 1
        return 0

    cpdef int update(self, SchedulerOutput out) except -1:
        """The step's forward pass succeeded: its tokens are computed, and the blocks they completed
        join the prefix cache. (The caller then appends the sampled tokens.)"""
        cdef Sequence seq
        cdef int bs = self.block_size
        cdef bint caching = self.kv.enable_prefix_caching
        for seq in out.scheduled:
            if seq.status_code != RUNNING:
                continue  # finished after it was scheduled
            seq.num_computed_tokens += seq.num_scheduled_tokens
            seq.num_scheduled_tokens = 0
            if caching and seq.num_computed_tokens // bs > seq.num_committed_blocks:
                self.kv.commit(seq)
        return 0

    # ---- leaving ----------------------------------------------------------------------------

    cpdef int finish(self, Sequence seq) except -1:
        """Remove a sequence that ended (finished, aborted or failed) and return its blocks."""
        if seq.status_code == RUNNING:
            del self.running[self._index(self.running, seq)]
        elif seq.status_code == WAITING:
            del self.waiting[self._index(self.waiting, seq)]
        elif seq.status_code == PARKED:
            self.num_parked -= 1
        else:
            return 0
        seq.num_scheduled_tokens = 0
        self.kv.free(seq)
        seq.status_code = FINISHED
        self._by_id.pop(seq.request.request_id, None)
        return 0

    def abort(self, str request_id):
        """Finish the request now if it is here; returns its Sequence, or None when unknown."""
        seq = self._by_id.get(request_id)
        if seq is not None:
            self.finish(seq)
        return seq

    def park(self, Sequence seq not None) -> None:
        """Take a running or waiting sequence out of scheduling until unpark(): its caller is not
        reading, so it gets no compute, and its blocks are freed (the full ones stay in the prefix
        cache, so the recompute on return is mostly cache hits). Between steps only."""
        if seq.status_code == RUNNING:
            del self.running[self._index(self.running, seq)]
        elif seq.status_code == WAITING:
            del self.waiting[self._index(self.waiting, seq)]
        else:
            raise ValueError(f"{seq!r} is neither running nor waiting")
        seq.num_scheduled_tokens = 0
        self.kv.free(seq)
        seq.num_computed_tokens = 0
        seq.status_code = PARKED
        self.num_parked += 1

    def unpark(self, Sequence seq not None) -> None:
        """A parked sequence waits again, in its place by urgency; anything else is left alone."""
        if seq.status_code != PARKED:
            return
        self.num_parked -= 1
        seq.status_code = WAITING
        self._insert(self.waiting, seq)

    def preempt(self, Sequence seq not None) -> None:
        """Send a running sequence back to waiting, freeing its blocks (as the scheduler does when
        blocks run out); for tests and for an operator's drain."""
        if seq.status_code != RUNNING:
            raise ValueError(f"{seq!r} is not running")
        self._preempt(seq)
