# cdef declarations of cyserve/fastpath/pretokenizer.pyx (UTF-8 pre-tokenizer scanners), cimported
# by tokenizer.pyx. Each extension has its own copy of the C code, so the class table is reached
# only through these functions, never declared here.
from libc.stdint cimport uint8_t


# Kind of the pre-tokenizer named `pre` (tokenizer.ggml.pre); ValueError for an unknown name.
cdef int pre_kind_of(str pre) except -1

# End of the pre-token that starts at byte i of the valid UTF-8 s[0:n], for a kind from
# pre_kind_of. *seg_end is scanner state: set it to 0 before the first word of a text.
cdef Py_ssize_t next_word(const uint8_t* s, Py_ssize_t i, Py_ssize_t n, int kind,
                          Py_ssize_t* seg_end) noexcept nogil
