# A growable int32 vector for token ids, shared by the tokenizer modules (C only, no GIL).
from libc.stdint cimport int32_t
from libc.stdlib cimport realloc


cdef struct IdVec:
    int32_t* data
    Py_ssize_t size
    Py_ssize_t cap


cdef inline int idvec_push(IdVec* v, int32_t value) noexcept nogil:
    """Append `value`; -1 when out of memory."""
    cdef int32_t* data
    cdef Py_ssize_t cap
    if v.size == v.cap:
        cap = v.cap * 2 if v.cap else 256
        data = <int32_t*>realloc(v.data, cap * sizeof(int32_t))
        if data == NULL:
            return -1
        v.data = data
        v.cap = cap
    v.data[v.size] = value
    v.size += 1
    return 0
