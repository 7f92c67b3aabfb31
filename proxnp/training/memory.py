"""Memory estimates checked before large allocations.

    check_memory(nbytes, "the model (12,345,678 parameters)")   # raises MemoryLimitError

What may still be allocated is the smaller of the kernel's ``MemAvailable`` and,
when an address-space limit is set (``ulimit -v``, ``RLIMIT_AS``), that limit
minus the process's current virtual size.  Where neither can be read (not Linux)
nothing is checked, and a real ``MemoryError`` is turned into one line by the CLI.
"""

try:
    import resource
except ImportError:  # Windows: no address-space limits to read
    resource = None

from .errors import MemoryLimitError

GIB = 1 << 30


def format_bytes(n):
    """'3.5 GiB', '12.0 MiB', '512 bytes'."""
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _proc_kib(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def address_space_available():
    """Bytes of address space left under ``RLIMIT_AS``, or None where no limit is set."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS) if resource else (None, None)
    if not resource or soft == resource.RLIM_INFINITY:
        return None
    used = _proc_kib("/proc/self/status", "VmSize")
    return max(0, soft - used) if used is not None else soft


def memory_available():
    """Bytes this process can still allocate, or None where that is unknown."""
    limits = [_proc_kib("/proc/meminfo", "MemAvailable"), address_space_available()]
    known = [v for v in limits if v is not None]
    return min(known) if known else None


def check_memory(nbytes, what, error=MemoryLimitError):
    """Raise ``error`` naming ``what`` if about ``nbytes`` more bytes will not fit."""
    available = memory_available()
    if available is not None and nbytes > available:
        raise error(
            f"{what} needs about {format_bytes(nbytes)} of memory, but only "
            f"{format_bytes(available)} are available"
        )
