# Checks shared by the kernel wrappers at the Python edge (inline, no module of its own).
from cyserve.kernels.cpu.ckernels cimport CYS_ERR_NOMEM, CYS_ERR_SHAPE, CYS_ERR_TYPE, CYS_OK


cdef inline int check_rc(int rc, str what) except -1:
    """Turn a C return code into the matching Python exception."""
    if rc == CYS_OK:
        return 0
    if rc == CYS_ERR_NOMEM:
        raise MemoryError(f"{what}: out of memory for kernel scratch buffers")
    if rc == CYS_ERR_TYPE:
        raise ValueError(f"{what}: unsupported weight type")
    if rc == CYS_ERR_SHAPE:
        raise ValueError(f"{what}: K must be a positive multiple of the block size")
    raise RuntimeError(f"{what}: kernel failed with code {rc}")


cdef inline int check_disjoint(const void *a, size_t a_bytes, const void *b, size_t b_bytes,
                               str what) except -1:
    """Raise unless [a, a+a_bytes) and [b, b+b_bytes) do not overlap."""
    cdef size_t pa = <size_t>a, pb = <size_t>b
    if a_bytes and b_bytes and pa < pb + b_bytes and pb < pa + a_bytes:
        raise ValueError(what)
    return 0


cdef inline int check_same_or_disjoint(const void *a, const void *b, size_t nbytes,
                                       str what) except -1:
    """Elementwise kernels accept out == input exactly, but not a shifted overlap."""
    if a == b:
        return 0
    return check_disjoint(a, nbytes, b, nbytes, what)
