"""Block allocator: exact small cases and a hypothesis state machine over its accounting."""
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cyserve.fastpath.block_allocator import BlockAccountingError, BlockAllocator


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


class AllocatorMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.alloc = BlockAllocator(12, 4)
        self.owned: list[list[int]] = []

    @rule(n=st.integers(0, 6))
    def allocate(self, n):
        got = self.alloc.allocate(n)
        held = sum(len(b) for b in self.owned)
        if n > 12 - held:
            assert got is None
        else:
            assert got is not None and len(got) == n
            self.owned.append(got)

    @precondition(lambda self: self.owned)
    @rule(i=st.integers(0, 100))
    def free(self, i):
        self.alloc.free(self.owned.pop(i % len(self.owned)))

    @invariant()
    def accounting(self):
        held = [b for blocks in self.owned for b in blocks]
        assert len(held) == len(set(held)), "a block was handed out twice"
        assert self.alloc.num_free_blocks + len(held) == self.alloc.num_blocks
        assert all(self.alloc.ref_count(b) == 1 for b in held)


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
