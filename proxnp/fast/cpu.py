"""The CPU's plumbing: host threads, BLAS thread counts, fork handling and glibc's malloc.

None of this changes a number; it only decides how the fast kernels
(:mod:`proxnp.fast.layers`, :mod:`proxnp.fast.prox`) use the cores.

* :func:`in_parallel` / :func:`parallel_sum` split work over the batch on host threads.
  The im2col/col2im copies and max pooling are memory-bound strided copies with short
  inner rows, which NumPy runs on one core; NumPy releases the GIL inside them, so each
  thread copies (and multiplies) its share of the batch.  Inside a part NumPy's BLAS runs
  on one thread: the parts are the parallelism.  (Left multi-threaded, OpenBLAS keeps a
  worker spinning after every product, which starves the copies on the other core.)
* :func:`limit_threads` caps the host threads and BLAS (the command line's ``--threads``).
* :func:`numpy_blas_one_thread`, :func:`scipy_single_thread`: NumPy's and SciPy's wheels
  each bundle their own OpenBLAS; a threaded SciPy call right after a NumPy product fights
  NumPy's still-spinning threads for the cores, so such calls run on one thread.
* :func:`reuse_host_memory`: glibc's ``mallopt``, so large temporaries are reused.

On a GPU none of this applies: a kernel is already parallel, so every function here
runs a CuPy computation as one call.
"""

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MAX_HOST_THREADS = 8
_host_threads = None  # set by limit_threads; None: one per usable core
_pool = None
_in_part = threading.local()  # set inside a part: nested sections run serially
_pool_lock = threading.Lock()


# ------------------------------------------------------------------- BLAS thread counts
@functools.lru_cache(maxsize=2)
def _blas_libs(of_numpy):
    """threadpoolctl handles of the BLAS libraries NumPy uses (True), or of those SciPy
    loaded besides them (False)."""
    try:
        import scipy.linalg  # noqa: F401 - make sure SciPy's BLAS is loaded
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return ()
    return tuple(
        lib
        for lib in ThreadpoolController().lib_controllers
        if lib.user_api == "blas" and ("numpy" in lib.filepath) == of_numpy
    )


@contextlib.contextmanager
def _one_thread(libs):
    old = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, old):
            lib.set_num_threads(n)


def scipy_single_thread():
    """Run SciPy's own BLAS/LAPACK on one thread inside the block."""
    return _one_thread(_blas_libs(of_numpy=False))


def numpy_blas_one_thread():
    """Run NumPy's BLAS on one thread inside the block (host-thread parts, small products)."""
    return _one_thread(_blas_libs(of_numpy=True))


def limit_threads(n):
    """Context manager: at most ``n`` threads for BLAS and for :func:`in_parallel`.

    ``None`` leaves both as they are.  The command line's ``--threads`` uses it.
    """
    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    stack = contextlib.ExitStack()
    stack.enter_context(threadpool_limits(limits=int(n), user_api="blas"))
    stack.enter_context(_host_thread_limit(int(n)))
    return stack


# ------------------------------------------------------------------------ host threads
def _forget_pool_in_child():
    """A forked child has none of the parent's threads: start a new pool when needed."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def host_threads():
    """How many host threads :func:`in_parallel` uses."""
    if _host_threads is not None:
        return _host_threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_HOST_THREADS))


@contextlib.contextmanager
def _host_thread_limit(n):
    global _host_threads
    old, _host_threads = _host_threads, max(1, min(n, MAX_HOST_THREADS))
    try:
        yield
    finally:
        _host_threads = old


def in_parallel(xp, n, fn):
    """Call ``fn(start, stop)`` on consecutive parts of range(n), one part per host thread.

    The parts must write disjoint memory.  NumPy: up to :func:`host_threads` parts,
    the caller's thread taking the first, NumPy's BLAS on one thread meanwhile; CuPy,
    one thread, or a call from inside a part: one call fn(0, n).  An exception from
    any part is raised here, after every part has finished.
    """
    parts = 1 if xp is not np or getattr(_in_part, "active", False) else min(n, host_threads())
    if parts <= 1:
        fn(0, n)
        return
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_HOST_THREADS - 1, thread_name_prefix="proxnp")
    bounds = [n * k // parts for k in range(parts + 1)]

    def part(start, stop):
        _in_part.active = True
        try:
            fn(start, stop)
        finally:
            _in_part.active = False

    with numpy_blas_one_thread():
        futures = [_pool.submit(part, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
        try:
            part(bounds[0], bounds[1])
        finally:
            errors = [f.exception() for f in futures]  # waits for every part
    for err in errors:
        if err is not None:
            raise err


def parallel_sum(xp, n, fn, block=None):
    """The sum over blocks [a, b) of range(n) of fn(a, b), a tuple of arrays.

    ``block=None``: one block per host thread; else blocks of that many, shared among
    the threads (:func:`in_parallel`).  Each thread adds up its own blocks, and the
    partial sums are added in a fixed order, so a result does not depend on timing.
    """
    if block is None:
        block = max(1, -(-n // host_threads())) if xp is np else max(n, 1)
    starts = range(0, max(n, 1), block)
    partial = {}

    def blocks(b0, b1):  # blocks [b0, b1)
        for a in starts[b0:b1]:
            terms = fn(a, min(a + block, n))
            partial[b0] = (
                terms if b0 not in partial else tuple(s + t for s, t in zip(partial[b0], terms))
            )

    in_parallel(xp, len(starts), blocks)
    total = None
    for b0 in sorted(partial):
        total = partial[b0] if total is None else tuple(s + t for s, t in zip(total, partial[b0]))
    return total


# ------------------------------------------------------------------------ host memory
def reuse_host_memory():
    """Let glibc keep freed large blocks for reuse instead of unmapping them; True if applied.

    By default glibc's malloc maps every block above 32 MiB afresh and unmaps it when freed,
    so each training step page-faults its large temporaries (the im2col matrices) in again.
    Serving blocks up to 1 GiB from the heap and never trimming it (``mallopt``
    M_MMAP_THRESHOLD, M_TRIM_THRESHOLD) removes those faults, at the price of a higher
    resident peak.  Process-wide, so the command line and the benchmarks call it; importing
    proxnp never does.  A no-op (False) without glibc.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(
            libc.mallopt(m_trim_threshold, (1 << 31) - 1)
        )
    except (OSError, AttributeError):
        return False
