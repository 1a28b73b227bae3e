"""Automatic prefix caching (KVCacheManager): exact cases, and a state machine that simulates the
runner writing K/V into blocks and checks that every token a sequence attends to holds exactly
the K/V that sequence would have computed itself, whatever was shared, evicted or reused."""
from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cyserve.fastpath.core.block_allocator import BlockAllocator
from cyserve.fastpath.core.kv_cache_manager import KVCacheManager
from cyserve.fastpath.core.request import EngineRequest
from cyserve.fastpath.core.sequence import Sequence

BS = 4


def seq_of(i: int, prompt: list[int], salt: str | None = None) -> Sequence:
    req = EngineRequest(f"s{i}", list(prompt), cache_salt=salt)
    return Sequence(req, i, list(prompt), len(prompt), 1000)


def admit(kv: KVCacheManager, seq: Sequence) -> bool:
    """What the scheduler does: take the cached prefix, then room for the rest."""
    hits = kv.get_computed_blocks(seq)
    return kv.allocate_slots(seq, seq.num_tokens - len(hits) * BS, hits)


def compute_all(kv: KVCacheManager, seq: Sequence) -> None:
    """Pretend the forward pass computed every scheduled token."""
    seq.num_computed_tokens = seq.num_tokens
    kv.commit(seq)


def test_a_shared_prefix_is_shared_block_for_block():
    kv = KVCacheManager.create(16, BS)
    a = seq_of(0, list(range(10)))
    assert admit(kv, a) and a.num_computed_tokens == 0
    compute_all(kv, a)
    b = seq_of(1, list(range(9)) + [99])
    assert admit(kv, b)
    assert b.block_ids[:2] == a.block_ids[:2] and b.block_ids[2] != a.block_ids[2]
    assert b.num_computed_tokens == 8 and b.num_cached_tokens == 8
    assert kv.allocator.ref_count(a.block_ids[0]) == 2
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (20, 8)


def test_hits_need_the_whole_prefix_not_just_the_block():
    kv = KVCacheManager.create(16, BS)
    a = seq_of(0, [1, 1, 1, 1, 2, 2, 2, 2, 3])
    admit(kv, a)
    compute_all(kv, a)
    b = seq_of(1, [9, 9, 9, 9, 2, 2, 2, 2, 3])  # same second block, different first
    admit(kv, b)
    assert b.num_computed_tokens == 0 and set(b.block_ids).isdisjoint(a.block_ids)


def test_the_last_prompt_token_is_always_computed():
    kv = KVCacheManager.create(16, BS)
    a = seq_of(0, list(range(8)))
    admit(kv, a)
    compute_all(kv, a)
    b = seq_of(1, list(range(8)))
    admit(kv, b)
    assert b.num_computed_tokens == 4, "a full hit would leave nothing to sample from"
    assert b.block_ids[0] == a.block_ids[0] and b.block_ids[1] != a.block_ids[1]


def test_salts_partition_the_cache():
    kv = KVCacheManager.create(16, BS)
    prompt = list(range(9))
    for i, salt in enumerate(["tenant-a", None]):
        s = seq_of(i, prompt, salt)
        admit(kv, s)
        assert s.num_computed_tokens == 0
        compute_all(kv, s)
    same = seq_of(2, prompt, "tenant-a")
    admit(kv, same)
    assert same.num_computed_tokens == 8


def test_blocks_join_the_cache_only_when_committed():
    kv = KVCacheManager.create(16, BS)
    a = seq_of(0, list(range(9)))
    admit(kv, a)
    b = seq_of(1, list(range(9)))
    admit(kv, b)
    assert b.num_computed_tokens == 0, "a's K/V is not computed yet"
    assert kv.allocator.num_cached_blocks == 0


def test_generated_tokens_are_cached_for_the_next_turn():
    kv = KVCacheManager.create(16, BS)
    a = seq_of(0, list(range(6)))
    admit(kv, a)
    compute_all(kv, a)
    for t in (50, 51, 52):  # decode: the second block fills up with output tokens
        a.token_ids.append(t)
        assert kv.allocate_slots(a, 1)
        a.num_computed_tokens += 1
        kv.commit(a)
    turn2 = seq_of(1, a.token_ids[:8] + [7, 7])
    admit(kv, turn2)
    assert turn2.num_computed_tokens == 8 and turn2.block_ids[:2] == a.block_ids[:2]


def test_no_room_changes_nothing_and_free_cached_hits_count_against_the_room():
    kv = KVCacheManager.create(3, BS)
    a = seq_of(0, list(range(5)))
    admit(kv, a)
    compute_all(kv, a)
    kv.free(a)  # both blocks free, the first one cached
    b = seq_of(1, list(range(4)) + [8] * 9)  # hits block 0, needs 3 more: 4 > 3
    hits = kv.get_computed_blocks(b)
    assert len(hits) == 1
    assert not kv.allocate_slots(b, b.num_tokens - BS, hits)
    assert b.block_ids == [] and b.num_computed_tokens == 0 and kv.allocator.num_free_blocks == 3
    c = seq_of(2, list(range(4)) + [8] * 5)  # hit + 2 more: fits exactly
    assert admit(kv, c) and kv.allocator.num_free_blocks == 0
    kv.allocator.check()


def test_disabled_prefix_caching_never_shares():
    kv = KVCacheManager.create(16, BS, enable_prefix_caching=False)
    a = seq_of(0, list(range(9)))
    admit(kv, a)
    compute_all(kv, a)
    b = seq_of(1, list(range(9)))
    admit(kv, b)
    assert b.num_computed_tokens == 0 and kv.allocator.num_cached_blocks == 0
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (0, 0)


PROMPTS = ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8, 1, 2], [1, 2, 3, 4, 7, 7, 7, 7, 7, 7, 7],
           [5, 6, 7, 8, 1, 2, 3, 4, 5])


class PrefixCacheMachine(RuleBasedStateMachine):
    """Sequences are admitted, computed chunk by chunk, decoded and freed. `kv_data` plays the
    runner: slot (block, offset) holds the whole token prefix whose K/V was written there, which
    is what K/V at that position depends on."""

    NUM_BLOCKS = 12

    def __init__(self):
        super().__init__()
        self.kv = KVCacheManager.create(self.NUM_BLOCKS, BS)
        self.live: list[Sequence] = []
        self.kv_data: dict[tuple[int, int], tuple] = {}
        self.count = 0

    @rule(p=st.integers(0, len(PROMPTS) - 1), extra=st.lists(st.integers(1, 3), max_size=5),
          salt=st.sampled_from([None, "x"]))
    def admit(self, p, extra, salt):
        seq = seq_of(self.count, PROMPTS[p] + extra, salt)
        self.count += 1
        hits = self.kv.get_computed_blocks(seq)
        if self.kv.allocate_slots(seq, 0, hits):
            self.live.append(seq)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 100), n=st.integers(1, 6))
    def compute(self, i, n):
        seq = self.live[i % len(self.live)]
        if seq.num_uncomputed_tokens == 0:
            seq.token_ids.append(seq.num_tokens % 3 + 1)  # sampled a token
        n = min(n, seq.num_uncomputed_tokens)
        if not self.kv.allocate_slots(seq, n):
            return
        for pos in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
            block = seq.block_ids[pos // BS]
            assert self.kv.allocator.ref_count(block) == 1, "K/V is only ever written into a private block"
            self.kv_data[(block, pos % BS)] = (seq.cache_salt, tuple(seq.token_ids[: pos + 1]))
        seq.num_computed_tokens += n
        self.kv.commit(seq)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 100))
    def free(self, i):
        self.kv.free(self.live.pop(i % len(self.live)))

    @invariant()
    def every_computed_token_reads_its_own_kv(self):
        for seq in self.live:
            for pos in range(seq.num_computed_tokens):
                got = self.kv_data.get((seq.block_ids[pos // BS], pos % BS))
                assert got == (seq.cache_salt, tuple(seq.token_ids[: pos + 1])), (seq, pos)

    @invariant()
    def writes_never_touch_shared_blocks(self):
        for seq in self.live:
            for k in range(seq.num_computed_tokens // BS, len(seq.block_ids)):
                assert self.kv.allocator.ref_count(seq.block_ids[k]) == 1, "a block still being written is private"

    @invariant()
    def books_balance(self):
        self.kv.allocator.check()
        held = [b for s in self.live for b in s.block_ids]
        assert self.kv.allocator.num_used_blocks == len(set(held))
        assert all(self.kv.allocator.ref_count(b) == held.count(b) for b in set(held))

    def teardown(self):
        for seq in self.live:
            self.kv.free(seq)
        assert self.kv.allocator.num_free_blocks == self.NUM_BLOCKS


TestPrefixCacheMachine = PrefixCacheMachine.TestCase
TestPrefixCacheMachine.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)


def test_allocator_is_shared_with_the_manager():
    alloc = BlockAllocator(4, BS)
    assert KVCacheManager(alloc).allocator is alloc
