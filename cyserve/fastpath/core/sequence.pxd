from libc.stdint cimport uint64_t


cdef class Sequence:
    cdef public object request
    cdef public long arrival_index          # admission order; FCFS within a priority
    cdef public list token_ids              # prompt followed by the output so far
    cdef public int num_prompt_tokens
    cdef public int max_len                 # prompt + output never grows past this
    cdef public uint64_t rng_state          # the sampler's per-request generator
    cdef public int num_computed_tokens     # tokens whose K/V are in this sequence's blocks
    cdef public list block_ids
    cdef public int status_code             # a SequenceStatus value; `status` is the enum view
    cdef public object finish_reason
    cdef public int num_preemptions
    cdef public int priority                # higher runs first
    cdef public object cache_salt           # str or None: prefix-cache namespace
    cdef public int num_cached_tokens       # prompt tokens served from the prefix cache (first admission)
    cdef public int num_scheduled_tokens    # tokens scheduled this step; 0 when not scheduled
    cdef public long preempted_at_step      # scheduler step of the last preemption, -1 if never
    cdef public int num_scored_prompt_rows  # prompt rows whose logprobs were computed (prompt_logprobs)
    cdef public object matcher              # structured.grammars.ConstraintMatcher, or None: unconstrained
    # Prefix-cache bookkeeping, owned by the KVCacheManager.
    cdef public int num_committed_blocks    # leading blocks already offered to the prefix cache
    cdef uint64_t* hashes                   # [2 * num_hashes] the 128-bit chain keys of the leading full
    cdef int num_hashes                     # blocks, as two 64-bit lanes each; grown lazily
    cdef int hashes_cap

    cdef int push_hash(self, uint64_t a, uint64_t b) except -1

    cdef inline int num_uncomputed(self) noexcept:
        return len(self.token_ids) - self.num_computed_tokens

    cdef inline bint ends_at_last_token(self) noexcept:
        """This step's chunk reaches the sequence's last token, so its next token is sampled."""
        return self.num_computed_tokens + self.num_scheduled_tokens == len(self.token_ids)
