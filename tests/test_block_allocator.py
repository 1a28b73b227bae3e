"""Block allocator: exact small cases (ids, free-queue order, LRU eviction of cached blocks) and a
hypothesis state machine over its accounting and its prefix-cache map."""
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cyserve.fastpath.core.block_allocator import BlockAccountingError, BlockAllocator

BS = 4
K, K0, K1 = 7 << 64 | 1, 1 << 127 | 5, 3  # 128-bit keys: both 64-bit lanes matter
KEYS = (1, 2, 1 << 64 | 1, 2 << 64 | 1, 1 << 64, 2 << 64, (1 << 128) - 1, 12345 << 70)


def toks(k: int) -> list[int]:
    return [k] * BS


def test_allocates_ascending_ids_and_reuses_the_last_freed_first():
    a = BlockAllocator(4, 16)
    assert a.allocate(3) == [0, 1, 2]
    a.free([1])
    assert a.num_free_blocks == 2
    assert a.allocate(1) == [1]
    assert a.allocate(2) is None, "not enough blocks is a normal answer, not an error"
    assert a.allocate(1) == [3]


def test_double_free_raises():
    a = BlockAllocator(2, 16)
    blocks = a.allocate(1)
    a.free(blocks)
    with pytest.raises(BlockAccountingError):
        a.free(blocks)


def test_blocks_needed_rounds_up():
    a = BlockAllocator(8, 16)
    assert [a.blocks_needed(n) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]


@pytest.mark.parametrize("num_blocks, block_size", [(0, 16), (4, 0)])
def test_rejects_empty_configuration(num_blocks, block_size):
    with pytest.raises(ValueError):
        BlockAllocator(num_blocks, block_size)


def test_cached_blocks_are_evicted_last_and_least_recently_freed_first():
    a = BlockAllocator(6, BS)
    seq_a, seq_b = a.allocate(2), a.allocate(2)  # [0, 1], [2, 3]
    for b, key in zip(seq_a + seq_b, (101, 102, 103, 104)):
        assert a.cache(b, key, toks(b))
    a.free(seq_a)  # tail block first: queue 4 5 | 1 0
    a.free(seq_b)  # queue 4 5 | 1 0 3 2
    assert a.free_queue() == [4, 5, 1, 0, 3, 2]
    assert a.num_free_blocks == 6 and a.num_cached_blocks == 4
    assert a.allocate(3) == [4, 5, 1], "empty blocks first, then the least recently freed cached one"
    assert a.key_of(1) is None and a.lookup(102, toks(1)) == -1, "an evicted block leaves the cache"
    assert a.num_cached_blocks == 3 and a.num_evictions == 1
    a.check()


def test_uncached_free_goes_to_the_front_cached_to_the_back():
    a = BlockAllocator(4, BS)
    blocks = a.allocate(4)
    assert a.cache(blocks[0], K0, toks(0))
    a.free(blocks)
    assert a.free_queue() == [1, 2, 3, 0]


def test_a_hit_takes_a_free_cached_block_out_of_the_queue():
    a = BlockAllocator(3, BS)
    [b] = a.allocate(1)
    a.cache(b, K, toks(9))
    a.free([b])
    assert a.num_free_blocks == 3
    assert a.lookup(K, toks(9), share=True) == b
    assert a.ref_count(b) == 1 and a.num_free_blocks == 2 and b not in a.free_queue()
    assert a.lookup(K, toks(9), share=True) == b and a.ref_count(b) == 2
    a.free([b])
    a.free([b])
    assert a.free_queue()[-1] == b
    a.check()


def test_a_key_whose_tokens_differ_is_a_miss():
    a = BlockAllocator(2, BS)
    [b] = a.allocate(1)
    a.cache(b, K, toks(1))
    assert a.lookup(K, toks(2)) == -1, "a hash collision must not hand out another prefix's K/V"


def test_the_first_block_to_claim_a_key_keeps_it():
    a = BlockAllocator(2, BS)
    b0, b1 = a.allocate(2)
    assert a.cache(b0, K, toks(1))
    assert not a.cache(b1, K, toks(1))
    assert a.lookup(K, toks(1)) == b0 and a.key_of(b1) is None


def test_caching_disabled_never_hits():
    a = BlockAllocator(2, BS, enable_prefix_caching=False)
    [b] = a.allocate(1)
    assert not a.cache(b, K, toks(1))
    assert a.lookup(K, toks(1)) == -1 and a.num_cached_blocks == 0


def test_misuse_raises():
    a = BlockAllocator(2, BS)
    [b] = a.allocate(1)
    a.free([b])
    with pytest.raises(BlockAccountingError):
        a.cache(b, K, toks(1))  # not in use
    with pytest.raises(IndexError):
        a.ref_count(5)
    with pytest.raises(ValueError):
        a.allocate(-1)


def test_reset_prefix_cache_forgets_only_free_blocks():
    a = BlockAllocator(3, BS)
    b0, b1 = a.allocate(2)
    a.cache(b0, K0, toks(0))
    a.cache(b1, K1, toks(1))
    a.free([b0])
    assert a.reset_prefix_cache() == 1
    assert a.lookup(K0, toks(0)) == -1 and a.lookup(K1, toks(1)) == b1
    a.check()


class AllocatorMachine(RuleBasedStateMachine):
    """Requests allocate, cache, share and free blocks; the books must balance after every step."""

    NUM_BLOCKS = 10

    def __init__(self):
        super().__init__()
        self.alloc = BlockAllocator(self.NUM_BLOCKS, BS)
        self.owned: list[list[int]] = []  # one list of block ids per holder
        self.contents: dict[str, int] = {}  # key -> the token value its block was cached with

    @rule(n=st.integers(0, 5))
    def allocate(self, n):
        free_before = self.alloc.num_free_blocks
        got = self.alloc.allocate(n)
        if n > free_before:
            assert got is None and self.alloc.num_free_blocks == free_before
        else:
            assert got is not None and len(got) == n and all(self.alloc.ref_count(b) == 1 for b in got)
            self.owned.append(got)

    @precondition(lambda self: self.owned)
    @rule(i=st.integers(0, 100))
    def free(self, i):
        self.alloc.free(self.owned.pop(i % len(self.owned)))

    @precondition(lambda self: any(self.owned))
    @rule(i=st.integers(0, 100), key=st.sampled_from(KEYS), value=st.integers(0, 2))
    def cache(self, i, key, value):
        held = [b for blocks in self.owned for b in blocks if self.alloc.key_of(b) is None]
        if not held:
            return
        b = held[i % len(held)]
        taken = self.alloc.lookup(key, toks(value)) >= 0 or key in self._live_keys()
        assert self.alloc.cache(b, key, toks(value)) == (not taken)
        if not taken:
            self.contents[key] = value

    @rule(key=st.sampled_from(KEYS), value=st.integers(0, 2))
    def share(self, key, value):
        b = self.alloc.lookup(key, toks(value), share=True)
        if b >= 0:
            assert self.contents[key] == value and self.alloc.key_of(b) == key
            self.owned.append([b])

    def _live_keys(self) -> set:
        return {self.alloc.key_of(b) for b in range(self.NUM_BLOCKS)} - {None}

    @invariant()
    def accounting(self):
        self.alloc.check()  # free queue == blocks with ref count 0; the map mirrors the block keys
        holders: dict[int, int] = {}
        for blocks in self.owned:
            for b in blocks:
                holders[b] = holders.get(b, 0) + 1
        for b in range(self.NUM_BLOCKS):
            assert self.alloc.ref_count(b) == holders.get(b, 0) >= 0
            if holders.get(b, 0) > 1:
                assert self.alloc.key_of(b) is not None, "only cached blocks are ever shared"
        assert self.alloc.num_free_blocks + self.alloc.num_used_blocks == self.NUM_BLOCKS
        assert self.alloc.num_used_blocks == len(holders)

    def teardown(self):
        while self.owned:
            self.alloc.free(self.owned.pop())
        assert self.alloc.num_free_blocks == self.NUM_BLOCKS
        self.alloc.check()


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
