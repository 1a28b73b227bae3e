"""Thread count and SIMD switch for the CPU kernels.

The count is passed to every kernel call (OpenMP's own omp_set_num_threads only affects the
thread that calls it, and the engine computes in its own thread). The default follows the
process's CPU affinity mask and its cgroup CPU quota, so a pod limited to 2 CPUs on a 64-core
node runs 2 threads, not 64.
"""
import math
import os

from cyserve.kernels.cpu.ckernels cimport cys_cpu_has_avx2

cdef int _num_threads = 1
cdef int _simd = 1


cdef int current_num_threads() noexcept nogil:
    return _num_threads


cdef int current_simd() noexcept nogil:
    return _simd


def _read(path):
    try:
        with open(path) as fh:
            return fh.read().split()
    except OSError:
        return None


def _cgroup_cpu_limit():
    """CPUs allowed by the cgroup quota (v2 cpu.max or v1 cfs quota), or None if unlimited."""
    paths = ["/sys/fs/cgroup/cpu.max"]
    own = _read("/proc/self/cgroup") or []
    for line in own:
        if line.startswith("0::"):  # cgroup v2 entry: 0::/path/of/this/process
            paths.insert(0, "/sys/fs/cgroup" + line[3:].rstrip("/") + "/cpu.max")
    for path in paths:
        fields = _read(path)
        if fields and len(fields) >= 2 and fields[0] != "max":
            try:
                return int(fields[0]) / int(fields[1])
            except (ValueError, ZeroDivisionError):
                pass
    quota = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    period = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    try:
        if quota and period and int(quota[0]) > 0:
            return int(quota[0]) / int(period[0])
    except (ValueError, ZeroDivisionError):
        pass
    return None


def default_num_threads() -> int:
    """CPUs this process may run on: the affinity mask, capped by the cgroup quota (floored)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def set_num_threads(int n) -> None:
    """Threads each kernel call may use from now on (for calls from any thread)."""
    global _num_threads
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    _num_threads = n


def get_num_threads() -> int:
    return _num_threads


def simd_supported() -> bool:
    """True when this CPU has AVX2, FMA and F16C (the fast kernels' instruction set)."""
    return bool(cys_cpu_has_avx2())


def set_simd(bint enabled) -> None:
    """False forces the scalar twin of every kernel (tests use it to check both paths)."""
    global _simd
    _simd = 1 if enabled else 0


def simd_enabled() -> bool:
    """True when kernels will take the AVX2 path: allowed by set_simd and supported here."""
    return bool(_simd and cys_cpu_has_avx2())


_num_threads = default_num_threads()
