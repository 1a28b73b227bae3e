"""Scheduler: budgets, admission order, preemption and exact block accounting."""
from hypothesis import given, settings
from hypothesis import strategies as st

from cyserve.fastpath.block_allocator import BlockAllocator
from cyserve.fastpath.request import EngineRequest
from cyserve.fastpath.scheduler import Scheduler
from cyserve.fastpath.sequence import Sequence, SequenceStatus


def make_seq(i: int, prompt_len: int, max_len: int = 10_000) -> Sequence:
    req = EngineRequest(f"r{i}", list(range(1, prompt_len + 1)))
    return Sequence(req, i, list(req.prompt_token_ids), prompt_len, max_len, rng_state=i)


def run_step(sched: Scheduler) -> dict:
    """Pretend to run the forward: mark scheduled tokens computed, append a token where sampled."""
    out = sched.schedule()
    done = {}
    for s in out.scheduled:
        sampled = s.samples
        s.seq.num_computed_tokens += s.num_new_tokens
        if sampled:
            s.seq.token_ids.append(7)
        done[s.seq.request_id] = s.num_new_tokens
    return done


def test_decodes_first_then_chunked_prefill_under_the_token_budget():
    sched = Scheduler(BlockAllocator(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    a = make_seq(0, 3)
    sched.add(a)
    assert run_step(sched) == {"r0": 3}
    b = make_seq(1, 25)
    sched.add(b)
    assert run_step(sched) == {"r0": 1, "r1": 9}  # a's decode, then a 9-token chunk of b
    assert run_step(sched) == {"r0": 1, "r1": 9}
    assert run_step(sched) == {"r0": 1, "r1": 7}
    assert b.num_output_tokens == 1, "b samples only once its whole prompt is computed"


def test_preempts_the_newest_when_blocks_run_out_and_recomputes_it():
    sched = Scheduler(BlockAllocator(4, 4), max_num_seqs=8, max_num_batched_tokens=64)
    old, new = make_seq(0, 8), make_seq(1, 7)
    sched.add(old)
    sched.add(new)
    run_step(sched)  # old: 2 blocks for 8 tokens (+1 sampled), new: 2 blocks
    assert sched.allocator.num_free_blocks == 0
    out = sched.schedule()  # old needs a 3rd block for its 9th token -> new is preempted
    assert out.preempted == [new]
    assert new.status == SequenceStatus.WAITING and new.num_computed_tokens == 0 and new.block_ids == []
    assert [s.seq for s in out.scheduled] == [old]
    assert sched.num_preemptions == 1


def test_finish_returns_every_block():
    alloc = BlockAllocator(16, 4)
    sched = Scheduler(alloc, max_num_seqs=4, max_num_batched_tokens=16)
    seqs = [make_seq(i, 5) for i in range(3)]
    for s in seqs:
        sched.add(s)
    run_step(sched)
    for s in seqs:
        sched.finish(s)
    assert alloc.num_free_blocks == 16 and not sched.has_work()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 12)), min_size=1, max_size=10),
       st.integers(8, 40), st.integers(1, 5), st.integers(4, 24), st.randoms(use_true_random=False))
def test_random_traces_finish_without_leaks_or_budget_overruns(specs, num_blocks, max_seqs, budget, rnd):
    alloc = BlockAllocator(num_blocks, 4)
    sched = Scheduler(alloc, max_num_seqs=max_seqs, max_num_batched_tokens=budget)
    capacity = num_blocks * 4
    seqs = []
    for i, (prompt, out_len) in enumerate(specs):
        prompt = min(prompt, capacity - 1)  # the engine rejects prompts that can never fit
        seqs.append(make_seq(i, prompt, max_len=min(prompt + out_len, capacity)))
        sched.add(seqs[-1])
    for _ in range(2000):
        if not sched.has_work():
            break
        if rnd.random() < 0.05:  # abort something at random
            victim = rnd.choice(seqs)
            sched.finish(victim)
        done = run_step(sched)
        assert sum(done.values()) <= budget
        assert len(sched.running) <= max_seqs
        held = [b for s in sched.running for b in s.block_ids]
        assert len(held) == len(set(held)) and len(held) + alloc.num_free_blocks == num_blocks
        for s in list(sched.running):
            if s.num_tokens >= s.max_len and s.num_computed_tokens == s.num_tokens - 1:
                sched.finish(s)
    assert not sched.has_work(), "every request finishes or is aborted"
    assert alloc.num_free_blocks == num_blocks
