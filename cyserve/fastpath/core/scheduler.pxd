from cyserve.fastpath.core.kv_cache_manager cimport KVCacheManager
from cyserve.fastpath.core.sequence cimport Sequence


cdef class SchedulerOutput:
    cdef readonly long step
    cdef public list scheduled          # [Sequence] in batch order; each has num_scheduled_tokens set
    cdef public list preempted          # [Sequence] sent back to waiting this step
    cdef public list sampling           # the scheduled ones whose chunk ends at their last token
    cdef public int num_scheduled_tokens


cdef class Scheduler:
    cdef readonly KVCacheManager kv
    cdef readonly int block_size
    cdef readonly int max_num_seqs
    cdef readonly int max_num_batched_tokens
    cdef readonly list waiting          # [Sequence], most urgent first: priority desc, then arrival
    cdef readonly list running          # the same order; preemption takes from the end
    cdef dict _by_id
    cdef readonly long num_preemptions
    cdef readonly int num_parked        # sequences taken out by park() until unpark()
    cdef readonly long num_steps
    cdef readonly long num_scheduled_tokens_total
    cdef readonly int last_num_scheduled_tokens
    cdef int _budget                    # tokens left in the step being scheduled
    cdef SchedulerOutput _out           # the step being scheduled, else None

    cdef int _insert(self, list queue, Sequence seq) except -1
    cdef Py_ssize_t _index(self, list queue, Sequence seq) except -1
    cdef int _schedule_seq(self, Sequence seq, int n) except -1
    cdef int _preempt(self, Sequence victim) except -1
    cdef bint _reserve(self, Sequence seq, int n) except -1
    cdef bint _outranks_last_running(self, Sequence seq) noexcept
    cdef int _schedule_running(self, bint decodes) except -1
    cdef int _admit_waiting(self) except -1
    cpdef SchedulerOutput schedule(self)
    cpdef int update(self, SchedulerOutput out) except -1
    cpdef int finish(self, Sequence seq) except -1
