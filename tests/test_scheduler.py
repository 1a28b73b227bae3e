"""Scheduler: exact small cases (budgets, order, priority, preemption, prefix hits), a hypothesis
state machine over add / step / abort / finish / preempt, and the pure-Python reference scheduler
(tests/scheduler_reference.py) run against the Cython one on random traces."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cyserve.fastpath.core.block_allocator import BlockAllocator
from cyserve.fastpath.core.kv_cache_manager import KVCacheManager
from cyserve.fastpath.core.request import EngineRequest
from cyserve.fastpath.core.scheduler import Scheduler
from cyserve.fastpath.core.sequence import Sequence, SequenceStatus
from scheduler_reference import RefAllocator, RefKV, RefScheduler, RefSeq


def make_scheduler(num_blocks: int, block_size: int = 4, max_num_seqs: int = 8, budget: int = 64,
                   caching: bool = True) -> Scheduler:
    return Scheduler(KVCacheManager(BlockAllocator(num_blocks, block_size, caching)), max_num_seqs, budget)


def make_seq(i: int, prompt, max_len: int = 10_000, priority: int = 0, salt: str | None = None) -> Sequence:
    prompt = list(range(1, prompt + 1)) if isinstance(prompt, int) else list(prompt)
    req = EngineRequest(f"r{i}", prompt, priority=priority, cache_salt=salt)
    return Sequence(req, i, list(prompt), len(prompt), max_len, rng_state=i)


def next_token(token_ids: list[int]) -> int:
    """The pretend model: deterministic, small alphabet (so outputs share blocks too)."""
    return (len(token_ids) * 7 + token_ids[-1]) % 5 + 1


def run_step(sched: Scheduler) -> dict[str, int]:
    """Pretend to run the forward: update, append a token where sampled; returns {id: tokens}."""
    out = sched.schedule()
    done = {s.request_id: s.num_scheduled_tokens for s in out.scheduled}
    sched.update(out)
    for s in out.sampling:
        s.token_ids.append(next_token(s.token_ids))
    return done


# ---- exact cases ------------------------------------------------------------------------------


def test_a_parked_sequence_holds_no_blocks_gets_no_steps_and_returns_in_its_place():
    sched = make_scheduler(16)
    a, b = make_seq(0, 6), make_seq(1, 5)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    free_before = sched.kv.allocator.num_free_blocks
    sched.park(a)
    assert a.status == SequenceStatus.PARKED and a.block_ids == [] and a.num_computed_tokens == 0
    assert sched.kv.allocator.num_free_blocks > free_before and sched.num_parked == 1
    assert set(run_step(sched)) == {"r1"}, "a parked sequence is not scheduled"
    sched.unpark(a)
    assert a.status == SequenceStatus.WAITING and sched.num_parked == 0
    had = a.num_tokens
    assert "r0" in run_step(sched)
    assert a.num_computed_tokens == had and a.num_tokens == had + 1, "it recomputes what it had (its full blocks "\
        "from the prefix cache), then samples"
    sched.park(b)
    assert sched.abort("r1") is b and b.status == SequenceStatus.FINISHED and sched.num_parked == 0
    with pytest.raises(ValueError, match="neither running nor waiting"):
        sched.park(b)


def test_decodes_first_then_chunked_prefill_under_the_token_budget():
    sched = make_scheduler(64, budget=10)
    a = make_seq(0, 3)
    sched.add(a)
    assert run_step(sched) == {"r0": 3}
    b = make_seq(1, 25)
    sched.add(b)
    assert run_step(sched) == {"r0": 1, "r1": 9}  # a's decode, then a 9-token chunk of b
    assert run_step(sched) == {"r0": 1, "r1": 9}
    assert run_step(sched) == {"r0": 1, "r1": 7}
    assert b.num_output_tokens == 1, "b samples only once its whole prompt is computed"
    assert sched.last_num_scheduled_tokens == 8 and sched.num_scheduled_tokens_total == 3 + 10 + 10 + 8


def test_decodes_come_before_prefill_chunks_even_of_more_urgent_sequences():
    sched = make_scheduler(64, budget=8)
    short = make_seq(0, 2)
    sched.add(short)
    assert run_step(sched) == {"r0": 2}
    urgent = make_seq(1, [50 + i for i in range(30)], priority=1)
    sched.add(urgent)
    assert run_step(sched) == {"r0": 1, "r1": 7}
    assert sched.running == [urgent, short], "the running queue is ordered by urgency"
    assert run_step(sched) == {"r0": 1, "r1": 7}, "yet the decode is served before the prefill chunk"


def test_the_head_of_the_waiting_queue_is_not_overtaken():
    sched = make_scheduler(6, budget=64, caching=False)
    sched.add(make_seq(0, 16))
    run_step(sched)  # 5 of 6 blocks in use after the first decode's block
    big, small = make_seq(1, 12), make_seq(2, 2)
    sched.add(big)
    sched.add(small)
    assert run_step(sched) == {"r0": 1}, "small would fit, but big came first"


def test_sampling_marks_only_chunks_that_reach_the_last_token():
    sched = make_scheduler(64, budget=6)
    seq = make_seq(0, 10)
    sched.add(seq)
    out = sched.schedule()
    assert out.sampling == [] and out.num_scheduled_tokens == 6
    sched.update(out)
    out = sched.schedule()
    assert out.sampling == [seq] and seq.num_scheduled_tokens == 4


def test_preempts_the_newest_when_blocks_run_out_and_recomputes_it():
    sched = make_scheduler(4, caching=False)
    old, new = make_seq(0, 8), make_seq(1, 7)
    sched.add(old)
    sched.add(new)
    run_step(sched)  # old: 2 blocks for 8 tokens (+1 sampled), new: 2 blocks
    assert sched.kv.allocator.num_free_blocks == 0
    out = sched.schedule()  # old needs a 3rd block for its 9th token -> new is preempted
    assert out.preempted == [new]
    assert new.status == SequenceStatus.WAITING and new.num_computed_tokens == 0 and new.block_ids == []
    assert [s for s in out.scheduled] == [old]
    assert sched.num_preemptions == 1 and new.num_preemptions == 1
    sched.update(out)
    old.token_ids.append(1)
    assert run_step(sched) == {"r0": 1}, "not re-admitted while there is no room"


def test_preempted_sequence_recomputes_from_its_own_cached_blocks():
    sched = make_scheduler(5)
    old, new = make_seq(0, 8), make_seq(1, 8)
    sched.add(old)
    sched.add(new)
    run_step(sched)  # 4 blocks in use, both prompts cached
    out = sched.schedule()  # old's 9th token needs a 5th block: fine; new's too: no room
    assert out.preempted == [new]
    sched.update(out)
    sched.finish(old)
    out = sched.schedule()
    assert out.scheduled == [new]
    assert new.num_scheduled_tokens == 1, "8 of its 9 tokens come back from the prefix cache"
    assert new.num_cached_tokens == 0, "usage reports the first admission's hits only"


def test_priority_orders_admission_fcfs_within_a_priority():
    sched = make_scheduler(64, max_num_seqs=2)
    seqs = [make_seq(0, 2, priority=0), make_seq(1, 2, priority=5), make_seq(2, 2, priority=0),
            make_seq(3, 2, priority=5)]
    for s in seqs:
        sched.add(s)
    assert [s.request_id for s in sched.waiting] == ["r1", "r3", "r0", "r2"]
    assert set(run_step(sched)) == {"r1", "r3"}


def test_higher_priority_waiting_request_preempts_the_least_urgent_running_one():
    sched = make_scheduler(4, caching=False)
    low_old, low_new = make_seq(0, 7), make_seq(1, 7)
    sched.add(low_old)
    sched.add(low_new)
    run_step(sched)
    urgent = make_seq(2, 3, priority=1)
    sched.add(urgent)
    out = sched.schedule()
    assert out.preempted == [low_new]
    assert [s.request_id for s in out.scheduled] == ["r0", "r2"]
    assert sched.running == [urgent, low_old]


def test_equal_priority_waits_instead_of_preempting():
    sched = make_scheduler(4, caching=False)
    a, b = make_seq(0, 7), make_seq(1, 7)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    c = make_seq(2, 3)
    sched.add(c)
    out = sched.schedule()
    assert out.preempted == [] and c.status == SequenceStatus.WAITING


def test_max_num_seqs_caps_the_running_queue():
    sched = make_scheduler(64, max_num_seqs=2)
    for i in range(4):
        sched.add(make_seq(i, 3))
    assert set(run_step(sched)) == {"r0", "r1"}
    assert sched.num_running == 2 and sched.num_waiting == 2


def test_abort_from_either_queue_frees_everything():
    sched = make_scheduler(16, max_num_seqs=1)
    a, b = make_seq(0, 5), make_seq(1, 5)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    assert sched.abort("r1") is b and b.status == SequenceStatus.FINISHED
    assert sched.abort("r0") is a and sched.abort("r0") is None
    assert not sched.has_work() and sched.kv.allocator.num_free_blocks == 16


def test_shared_prompt_prefix_is_computed_once():
    sched = make_scheduler(32)
    system = list(range(100, 112))  # 3 full blocks
    a, b = make_seq(0, system + [1, 2]), make_seq(1, system + [3])
    sched.add(a)
    run_step(sched)
    sched.add(b)
    assert run_step(sched) == {"r0": 1, "r1": 1}, "b computes only its last token"
    assert b.block_ids[:3] == a.block_ids[:3] and b.num_cached_tokens == 12
    assert sched.kv.prefix_cache_queries == 14 + 13 and sched.kv.prefix_cache_hits == 12


def test_duplicate_request_in_the_same_step_shares_nothing_but_stays_correct():
    sched = make_scheduler(32)
    a, b = make_seq(0, 9), make_seq(1, 9)
    sched.add(a)
    sched.add(b)
    assert run_step(sched) == {"r0": 9, "r1": 9}, "the cache only holds what finished computing"
    assert set(a.block_ids).isdisjoint(b.block_ids)
    c = make_seq(2, 9)
    sched.add(c)
    run_step(sched)
    assert c.block_ids[:2] == a.block_ids[:2], "the first to commit a key owns it"


def test_finish_returns_every_block():
    sched = make_scheduler(16, max_num_seqs=4, budget=16)
    seqs = [make_seq(i, 5) for i in range(3)]
    for s in seqs:
        sched.add(s)
    run_step(sched)
    for s in seqs:
        sched.finish(s)
    assert sched.kv.allocator.num_free_blocks == 16 and not sched.has_work()
    sched.kv.allocator.check()


def test_rejects_duplicate_ids_and_bad_limits():
    sched = make_scheduler(8)
    sched.add(make_seq(0, 2))
    with pytest.raises(ValueError):
        sched.add(make_seq(0, 2))
    with pytest.raises(ValueError):
        make_scheduler(8, max_num_seqs=0)


# ---- the reference scheduler on random traces -------------------------------------------------

PREFIXES = ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 9, 9, 9, 9], [5, 5, 5, 5, 5, 5])
ADD = st.tuples(st.just("add"), st.integers(0, 2), st.integers(0, 9), st.integers(-1, 1),
                st.sampled_from([None, None, "tenant-a"]), st.integers(1, 10))
TRACE = st.lists(st.one_of(ADD, st.just(("step",)), st.tuples(st.just("abort"), st.integers(0, 40))), max_size=50)


class Pair:
    """The Cython scheduler and the reference, fed the same operations."""

    def __init__(self, num_blocks, block_size, caching, max_seqs, budget):
        self.cy = make_scheduler(num_blocks, block_size, max_seqs, budget, caching)
        self.ref = RefScheduler(RefKV(RefAllocator(num_blocks, block_size, caching)), max_seqs, budget)
        self.capacity = num_blocks * block_size
        self.cy_seqs: list[Sequence] = []
        self.ref_seqs: list[RefSeq] = []

    def add(self, prefix, suffix_len, priority, salt, out_len):
        i = len(self.cy_seqs)
        prompt = (PREFIXES[prefix] + [(i * 3 + j) % 7 + 20 for j in range(suffix_len)])[: self.capacity - 1]
        max_len = min(len(prompt) + out_len, self.capacity)
        self.cy_seqs.append(make_seq(i, prompt, max_len, priority, salt))
        self.ref_seqs.append(RefSeq(f"r{i}", i, list(prompt), max_len, priority, salt))
        self.cy.add(self.cy_seqs[-1])
        self.ref.add(self.ref_seqs[-1])

    def abort(self, i):
        if self.cy_seqs:
            i %= len(self.cy_seqs)
            self.cy.abort(f"r{i}")
            self.ref.finish(self.ref_seqs[i])

    def step(self):
        out = self.cy.schedule()
        got = ([(s.request_id, s.num_scheduled_tokens) for s in out.scheduled], [s.request_id for s in out.preempted])
        assert got == self.ref.schedule()
        self.cy.update(out)
        ref_sampling = self.ref.update()
        assert [s.request_id for s in out.sampling] == [s.request_id for s in ref_sampling]
        for cy_seq, ref_seq in zip(out.sampling, ref_sampling):
            cy_seq.token_ids.append(next_token(cy_seq.token_ids))
            ref_seq.token_ids.append(next_token(ref_seq.token_ids))
            if cy_seq.num_tokens >= cy_seq.max_len:
                self.cy.finish(cy_seq)
                self.ref.finish(ref_seq)
        self.compare()

    def compare(self):
        for cy_seq, ref_seq in zip(self.cy_seqs, self.ref_seqs):
            assert (cy_seq.num_computed_tokens, cy_seq.block_ids, cy_seq.token_ids) == (
                ref_seq.num_computed, ref_seq.blocks, ref_seq.token_ids), cy_seq.request_id
        alloc = self.cy.kv.allocator
        assert alloc.free_queue() == self.ref.kv.alloc.free_queue
        assert alloc.num_cached_blocks == len(self.ref.kv.alloc.cache)
        assert (self.cy.num_preemptions, self.cy.kv.prefix_cache_queries, self.cy.kv.prefix_cache_hits) == (
            self.ref.num_preemptions, self.ref.kv.queries, self.ref.kv.hits)
        assert [s.request_id for s in self.cy.running] == [s.request_id for s in self.ref.running]
        assert [s.request_id for s in self.cy.waiting] == [s.request_id for s in self.ref.waiting]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TRACE, st.integers(6, 24), st.sampled_from([2, 4]), st.booleans(), st.integers(1, 5), st.integers(1, 20))
def test_matches_the_reference_scheduler_on_random_traces(trace, num_blocks, block_size, caching, max_seqs, budget):
    pair = Pair(num_blocks, block_size, caching, max_seqs, budget)
    for op in trace:
        getattr(pair, op[0])(*op[1:])
    for _ in range(1000):
        if not pair.cy.has_work():
            break
        pair.step()
    assert not pair.cy.has_work() and not pair.ref.running and not pair.ref.waiting, "every request finishes"
    assert pair.cy.kv.allocator.num_free_blocks == num_blocks


# ---- a state machine over the Cython scheduler ------------------------------------------------


class SchedulerMachine(RuleBasedStateMachine):
    NUM_BLOCKS, BLOCK_SIZE, MAX_SEQS, BUDGET = 12, 4, 4, 10

    def __init__(self):
        super().__init__()
        self.sched = make_scheduler(self.NUM_BLOCKS, self.BLOCK_SIZE, self.MAX_SEQS, self.BUDGET)
        self.live: list[Sequence] = []
        self.ended: list[Sequence] = []
        self.count = 0

    @rule(prefix=st.integers(0, 2), extra=st.integers(0, 12), out_len=st.integers(1, 12), priority=st.integers(0, 2))
    def add(self, prefix, extra, out_len, priority):
        capacity = self.NUM_BLOCKS * self.BLOCK_SIZE
        prompt = (PREFIXES[prefix] + [self.count % 3 + 30] * extra)[: capacity - 1]
        seq = make_seq(self.count, prompt, min(len(prompt) + out_len, capacity), priority)
        self.count += 1
        self.sched.add(seq)
        self.live.append(seq)

    @rule()
    def step(self):
        done = run_step(self.sched)
        assert sum(done.values()) <= self.BUDGET and len(done) <= self.MAX_SEQS
        for seq in list(self.live):
            if seq.num_tokens >= seq.max_len:
                self._end(seq)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 100))
    def abort(self, i):
        seq = self.live[i % len(self.live)]
        assert self.sched.abort(seq.request_id) is seq
        self.live.remove(seq)
        self.ended.append(seq)

    @precondition(lambda self: self.sched.running)
    @rule(i=st.integers(0, 100))
    def preempt(self, i):
        seq = self.sched.running[i % len(self.sched.running)]
        self.sched.preempt(seq)
        assert seq.status == SequenceStatus.WAITING and seq.block_ids == [] and seq.num_computed_tokens == 0

    def _end(self, seq):
        self.sched.finish(seq)
        self.live.remove(seq)
        self.ended.append(seq)

    @invariant()
    def books_balance(self):
        alloc = self.sched.kv.allocator
        alloc.check()
        holders: dict[int, int] = {}
        for seq in self.sched.running:
            assert len(seq.block_ids) * self.BLOCK_SIZE >= seq.num_computed_tokens
            for b in seq.block_ids:
                holders[b] = holders.get(b, 0) + 1
        for seq in self.sched.waiting:
            assert seq.block_ids == [], "a waiting sequence holds no blocks"
        assert all(alloc.ref_count(b) == holders.get(b, 0) for b in range(alloc.num_blocks))
        assert alloc.num_free_blocks + alloc.num_used_blocks == alloc.num_blocks
        assert len(self.sched.running) <= self.MAX_SEQS
        assert all(s.status == SequenceStatus.FINISHED and s.block_ids == [] for s in self.ended)

    def teardown(self):
        for _ in range(2000):
            if not self.sched.has_work():
                break
            self.step()
        assert not self.sched.has_work(), "every request finishes"
        assert self.sched.kv.allocator.num_free_blocks == self.NUM_BLOCKS


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
