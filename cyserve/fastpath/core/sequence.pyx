"""Engine-side state of one request: its tokens, how many have K/V computed, its blocks.

A cdef class so the scheduler reads and writes its counters as C fields (a step over hundreds of
sequences costs microseconds); Python code sees the same attributes as plain ones.
"""
import enum

from libc.stdint cimport uint64_t
from libc.stdlib cimport free, realloc

from cyserve.fastpath.core.request import FinishReason


class SequenceStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2
    PARKED = 3  # out of scheduling until its caller reads (Scheduler.park)


cdef class Sequence:
    def __init__(self, request, long arrival_index, list token_ids, int num_prompt_tokens, int max_len,
                 rng_state=0, int num_computed_tokens=0, list block_ids=None, status=SequenceStatus.WAITING,
                 finish_reason=None, int num_preemptions=0):
        self.request = request
        self.arrival_index = arrival_index
        self.token_ids = token_ids
        self.num_prompt_tokens = num_prompt_tokens
        self.max_len = max_len
        self.rng_state = rng_state
        self.num_computed_tokens = num_computed_tokens
        self.block_ids = [] if block_ids is None else block_ids
        self.status_code = int(status)
        self.finish_reason = FinishReason.NONE if finish_reason is None else finish_reason
        self.num_preemptions = num_preemptions
        self.priority = getattr(request, "priority", 0)
        self.cache_salt = getattr(request, "cache_salt", None)
        self.num_cached_tokens = 0
        self.num_scheduled_tokens = 0
        self.preempted_at_step = -1
        self.num_scored_prompt_rows = 0
        self.matcher = None
        self.num_committed_blocks = 0

    def __dealloc__(self):
        free(self.hashes)

    cdef int push_hash(self, uint64_t a, uint64_t b) except -1:
        cdef int cap
        cdef uint64_t* grown
        if self.num_hashes == self.hashes_cap:
            cap = self.hashes_cap * 2 if self.hashes_cap else 16
            grown = <uint64_t*> realloc(self.hashes, 2 * cap * sizeof(uint64_t))
            if grown == NULL:
                raise MemoryError()
            self.hashes, self.hashes_cap = grown, cap
        self.hashes[2 * self.num_hashes] = a
        self.hashes[2 * self.num_hashes + 1] = b
        self.num_hashes += 1
        return 0

    @property
    def block_hashes(self) -> list:
        """The chain keys hashed so far, as 128-bit ints (for tests and debugging)."""
        return [(<object> self.hashes[2 * i] << 64) | <object> self.hashes[2 * i + 1] for i in range(self.num_hashes)]

    @property
    def status(self):
        return SequenceStatus(self.status_code)

    @status.setter
    def status(self, value):
        self.status_code = int(value)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def samples_next_token(self) -> bool:
        """This step's chunk reaches the sequence's last token, so its next token is sampled."""
        return self.ends_at_last_token()

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id!r}, status={self.status.name}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={self.block_ids})")
