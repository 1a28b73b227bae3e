"""How much host memory this process may use: /proc/meminfo, narrowed by a cgroup v2 limit (a pod's)."""
from __future__ import annotations

FALLBACK_BYTES = 4 << 30  # when /proc/meminfo cannot be read


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo(field: str) -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FALLBACK_BYTES


def available_memory_bytes() -> int:
    """Memory this process can still use: MemAvailable, or less under a cgroup v2 limit (a pod)."""
    avail = _meminfo("MemAvailable")
    limit = _read_int("/sys/fs/cgroup/memory.max")
    used = _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        avail = min(avail, max(limit - used, 0))
    return avail


def total_memory_bytes() -> int:
    """All the memory this process could ever have: MemTotal, or the cgroup v2 limit if lower."""
    total = _meminfo("MemTotal")
    limit = _read_int("/sys/fs/cgroup/memory.max")
    return min(total, limit) if limit is not None else total
