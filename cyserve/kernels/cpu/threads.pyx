"""Thread count and instruction set for the CPU kernels.

The count is passed to every kernel call (OpenMP's own omp_set_num_threads only affects the
thread that calls it, and the engine computes in its own thread). The default follows the
process's CPU affinity mask and its cgroup CPU quota, so a pod limited to 2 CPUs on a 64-core
node runs 2 threads, not 64.

The instruction set is chosen once, at import, from CPUID: the best of avx512_vnni, avx_vnni,
avx2 and scalar this CPU has. The environment variable CYSERVE_ISA (one of those names, or
"auto") overrides it, for tests and benchmarks; naming one the CPU lacks is an error, not a
silent fallback, so a benchmark labelled avx2 measured avx2.
"""
import math
import os

from cyserve.kernels.cpu.ckernels cimport (
    CYS_ISA_AVX2, CYS_ISA_AVX512_VNNI, CYS_ISA_AVX_VNNI, CYS_ISA_SCALAR, cys_cpu_has_avx2, cys_cpu_isa,
    cys_cpu_supports_isa, cys_effective_isa,
)

ISA_ENV = "CYSERVE_ISA"
# Names of the levels, lowest first (the C enum CYS_ISA_*).
ISAS = ("scalar", "avx2", "avx_vnni", "avx512_vnni")
_LEVELS = {"scalar": CYS_ISA_SCALAR, "avx2": CYS_ISA_AVX2, "avx_vnni": CYS_ISA_AVX_VNNI,
           "avx512_vnni": CYS_ISA_AVX512_VNNI}

cdef int _num_threads = 1
cdef int _simd = CYS_ISA_AVX512_VNNI  # the level asked for; kernels run cys_effective_isa of it


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


def supported_isas() -> tuple[str, ...]:
    """The instruction sets this CPU (and OS) can run, lowest first; always includes "scalar"."""
    return tuple(name for name in ISAS if cys_cpu_supports_isa(_LEVELS[name]))


def best_isa() -> str:
    """The best instruction set this CPU has: what the kernels use unless told otherwise."""
    return ISAS[cys_cpu_isa()]


def set_isa(str name) -> None:
    """Run the kernels with instruction set `name` from now on ("auto": the best one here)."""
    global _simd
    if name == "auto":
        name = best_isa()
    if name not in _LEVELS:
        raise ValueError(f"unknown instruction set {name!r}: use auto or one of {', '.join(ISAS)}")
    if not cys_cpu_supports_isa(_LEVELS[name]):
        raise ValueError(f"this CPU cannot run {name}; it supports {', '.join(supported_isas())}")
    _simd = _LEVELS[name]


def get_isa() -> str:
    """The instruction set the kernels run with now."""
    return ISAS[cys_effective_isa(_simd)]


def isa_from_environment() -> str:
    """The instruction set CYSERVE_ISA names ("auto" when unset or empty)."""
    return os.environ.get(ISA_ENV, "").strip().lower() or "auto"


def simd_supported() -> bool:
    """True when this CPU has AVX2, FMA and F16C (the fast kernels' base instruction set)."""
    return bool(cys_cpu_has_avx2())


def set_simd(bint enabled) -> None:
    """False forces the scalar twin of every kernel; True restores the best instruction set here."""
    set_isa("auto" if enabled else "scalar")


def simd_enabled() -> bool:
    """True when kernels take a SIMD path (AVX2 or above)."""
    return cys_effective_isa(_simd) >= CYS_ISA_AVX2


_num_threads = default_num_threads()
try:
    set_isa(isa_from_environment())
except ValueError as exc:
    raise RuntimeError(f"{ISA_ENV}: {exc}") from None
