# Run-time knobs read by every kernel module (one copy, in this module, shared through cimport:
# each kernel extension links its own copy of the C code, so C globals would not be shared).

cdef int current_num_threads() noexcept nogil
cdef int current_simd() noexcept nogil
