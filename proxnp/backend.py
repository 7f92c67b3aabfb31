"""Array backend: NumPy on the CPU, CuPy on an NVIDIA GPU, one code path for both.

Every numeric function in proxnp starts with ``xp = get_xp(*arrays)``: the array
namespace follows the arrays, there is no global switch.  This is the only module
that imports CuPy, and it does so lazily, so a machine without CuPy (or without a
working GPU) never fails because of it.

    xp = get_xp(x, W)          # numpy, or cupy if x and W live on the GPU
    x_gpu = to_device(x, "gpu")
    x_cpu = to_numpy(x_gpu)

It also holds the CPU's threading: :func:`in_parallel` splits memory-bound work over
host threads, :func:`limit_threads` caps them and BLAS.
"""
import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

DEVICES = ("cpu", "gpu")


def _cupy_module():
    """Return the cupy module if it is already imported or importable, else None."""
    try:
        import cupy  # noqa: PLC0415 - the one lazy cupy import of the package
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return None
    return cupy


@functools.lru_cache(maxsize=1)
def gpu_status():
    """(usable, reason): whether CuPy and a CUDA device work, and why not.

    Any exception (no CuPy, no driver, no device, a broken runtime) means "no GPU".
    The answer is cached for the life of the process.
    """
    cupy = _cupy_module()
    if cupy is None:
        return False, "CuPy is not installed (pip install 'proxnp[gpu-cuda12]')"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return False, "CuPy found no CUDA device"
        # A tiny kernel proves the runtime, the driver and the compiler all work.
        value = float((cupy.arange(4, dtype=cupy.float32) * 2).sum())
        if value != 12.0:
            return False, "CuPy computed a wrong test value"
    except Exception as exc:  # any failure means: no usable GPU
        return False, f"CuPy cannot use a GPU: {type(exc).__name__}: {exc}"
    return True, f"{n} CUDA device(s) usable"


def gpu_available():
    """True when CuPy is installed and a CUDA device runs a kernel."""
    return gpu_status()[0]


def is_cupy_array(x):
    """True if ``x`` is a CuPy ndarray (checked without importing CuPy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def get_xp(*arrays):
    """The array namespace of the arguments: ``numpy`` or ``cupy``.

    Non-array arguments (None, Python scalars) are ignored.  Mixing NumPy and
    CuPy arrays raises ``TypeError``: arrays cross devices only at explicit calls.
    """
    n_cupy = n_numpy = 0
    for a in arrays:
        if a is None:
            continue
        if is_cupy_array(a):
            n_cupy += 1
        elif isinstance(a, np.ndarray):
            n_numpy += 1
    if n_cupy and n_numpy:
        raise TypeError(
            "proxnp: mixed NumPy and CuPy arrays in one operation; move them to one "
            "device first (to_device(x, 'gpu') or to_numpy(x))")
    if n_cupy:
        return _cupy_module()
    return np


def device_of(x):
    """'gpu' for a CuPy array, 'cpu' otherwise."""
    return "gpu" if is_cupy_array(x) else "cpu"


def to_device(x, device):
    """Return ``x`` as an array on ``device`` ('cpu' or 'gpu'); no copy if it is there."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    if device == "cpu":
        return to_numpy(x)
    ok, why = gpu_status()
    if not ok:
        raise RuntimeError(f"--device gpu requested but no GPU is usable: {why}")
    cupy = _cupy_module()
    return cupy.asarray(x)


def to_numpy(x):
    """Return ``x`` as a NumPy array (copying from the GPU when needed)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def scatter_add(xp, target, index, values):
    """In-place ``target[index] += values`` with repeated indices accumulated.

    NumPy spells it ``np.add.at``, CuPy ``cupyx.scatter_add``; both are reached
    through the namespace so callers keep one code path.
    """
    if xp is np:
        np.add.at(target, index, values)
    else:
        import cupyx  # noqa: PLC0415 - only reached with CuPy arrays

        cupyx.scatter_add(target, index, values)
    return target


def sparse_linalg(xp):
    """(LinearOperator, cg) of ``scipy.sparse.linalg`` or ``cupyx.scipy.sparse.linalg``."""
    if xp is np:
        from scipy.sparse.linalg import LinearOperator, cg  # noqa: PLC0415
    else:
        from cupyx.scipy.sparse.linalg import LinearOperator, cg  # noqa: PLC0415
    return LinearOperator, cg


def spd_solve(xp, M, B):
    """Solve M X = B for symmetric positive definite M by Cholesky (LAPACK or cuSOLVER)."""
    if xp is np:
        import scipy.linalg  # noqa: PLC0415
        with scipy_single_thread():
            factor = scipy.linalg.cho_factor(M, lower=True, check_finite=False)
            return scipy.linalg.cho_solve(factor, B, check_finite=False)
    from cupyx.scipy.linalg import solve_triangular  # noqa: PLC0415
    L = xp.linalg.cholesky(M)
    return solve_triangular(L, solve_triangular(L, B, lower=True), lower=True, trans="T")


def eigh(xp, K):
    """Eigenvalues (ascending) and orthonormal eigenvectors of a symmetric K: (lam, Q).

    NumPy arrays go to SciPy's divide-and-conquer ``syevd`` on one thread (measured on a
    500 x 500 float32 K: 18 ms, against 35 ms for ``numpy.linalg.eigh``); CuPy's to cuSOLVER.
    """
    if xp is np:
        import scipy.linalg  # noqa: PLC0415
        with scipy_single_thread():
            return scipy.linalg.eigh(K, driver="evd", check_finite=False)
    return xp.linalg.eigh(K)


@functools.lru_cache(maxsize=2)
def _blas_libs(of_numpy):
    """threadpoolctl handles of the BLAS libraries NumPy uses (True), or of those SciPy
    loaded besides them (False).

    The PyPI wheels of NumPy and SciPy each bundle their own OpenBLAS.  Right after
    a large NumPy product, NumPy's BLAS threads still spin; a multi-threaded SciPy
    LAPACK call then fights them for the cores (measured here: a 500x500 Cholesky
    takes 100 ms instead of 1 ms).  SciPy's calls are therefore run on one thread.
    """
    try:
        import scipy.linalg  # noqa: F401, PLC0415 - make sure SciPy's BLAS is loaded
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415
    except ImportError:
        return ()
    return tuple(lib for lib in ThreadpoolController().lib_controllers
                 if lib.user_api == "blas" and ("numpy" in lib.filepath) == of_numpy)


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
    """Run SciPy's own BLAS/LAPACK on one thread inside the block (see _blas_libs)."""
    return _one_thread(_blas_libs(of_numpy=False))


def numpy_blas_one_thread():
    """Run NumPy's BLAS on one thread inside the block (host-thread parts, small products)."""
    return _one_thread(_blas_libs(of_numpy=True))


def axpy(a, x, y, tmp=None):
    """In place y += a * x for arrays of one shape and dtype.

    On contiguous NumPy float arrays this is BLAS ``axpy`` -- one pass over y instead
    of a temporary and two, which matters because the optimizers are memory-bound on
    the paper's 20M-parameter MLP (measured: 27 ms instead of 43 ms per Nesterov
    step).  Elsewhere ``tmp`` (same shape and dtype, optional) is used as scratch.
    """
    xp = get_xp(x, y)
    if xp is np and x.dtype == y.dtype and y.dtype in (np.float32, np.float64) \
            and x.flags.c_contiguous and y.flags.c_contiguous and x.shape == y.shape:
        with scipy_single_thread():
            out = _blas_axpy(y.dtype.char)(x.reshape(-1), y.reshape(-1), a=a)
        if out.ctypes.data != y.ctypes.data:         # never expected; keep y correct anyway
            y[...] = out.reshape(y.shape)
        return y
    tmp = xp.multiply(x, a, out=tmp)
    y += tmp
    return y


@functools.lru_cache(maxsize=4)
def _blas_axpy(dtype_char):
    import scipy.linalg.blas  # noqa: PLC0415
    return scipy.linalg.blas.get_blas_funcs("axpy", dtype=np.dtype(dtype_char))


def synchronize(xp):
    """Wait for queued GPU work (no-op on NumPy); use before reading a wall clock."""
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def reuse_host_memory():
    """Let glibc keep freed large blocks for reuse instead of unmapping them; True if applied.

    By default glibc's malloc maps every block above 32 MiB afresh and unmaps it when freed,
    so each training step page-faults its large temporaries in again -- about 1 GB of im2col
    matrices per ConvNet step at batch 500.  Serving blocks up to 1 GiB from the heap and
    never trimming it (``mallopt`` M_MMAP_THRESHOLD, M_TRIM_THRESHOLD) removes those faults:
    measured here, the ConvNet BackProp step 12-38 % faster, ProxProp cg3 11-28 %, at the
    price of a higher resident peak (961 -> 1189 MB).  Process-wide, so the command line and
    the benchmarks call it; importing proxnp never does.  A no-op (False) without glibc.
    """
    import ctypes  # noqa: PLC0415
    import platform  # noqa: PLC0415

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and \
            bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


def limit_threads(n):
    """Context manager: at most ``n`` threads for BLAS and for :func:`in_parallel`.

    ``None`` leaves both as they are.  The command line's ``--threads`` uses it.
    """
    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    stack = contextlib.ExitStack()
    stack.enter_context(threadpool_limits(limits=int(n), user_api="blas"))
    stack.enter_context(_copy_thread_limit(int(n)))
    return stack


# ------------------------------------------------------------------ host threads
# The convolution's im2col/col2im copies and the max pooling are memory-bound strided
# copies with short inner rows (a 16-pixel image row), which NumPy runs on one core;
# NumPy releases the GIL inside them, so the batch is split over host threads (and the
# conv layers' Gram matrices are summed over blocks of the batch the same way).  Inside
# such a parallel section NumPy's BLAS runs on one thread: the parts are the parallelism.
# (Left multi-threaded, OpenBLAS's worker keeps spinning on the second core for ~0.1 s
# after every product and starves the copies: measured on 2 cores, im2col 19 -> 31 ms.)
# On the GPU a kernel is already parallel: one call, no threads.
_MAX_COPY_THREADS = 8
_copy_threads = None          # set by limit_threads; None: one per usable core
_copy_pool = None
_in_part = threading.local()  # set inside a part: nested sections run serially
_pool_lock = threading.Lock()


def _forget_pool_in_child():
    """A forked child has none of the parent's threads: start a new pool when needed."""
    global _copy_pool
    _copy_pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def copy_threads():
    """How many host threads :func:`in_parallel` uses."""
    if _copy_threads is not None:
        return _copy_threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:                        # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_COPY_THREADS))


@contextlib.contextmanager
def _copy_thread_limit(n):
    global _copy_threads
    old, _copy_threads = _copy_threads, max(1, min(n, _MAX_COPY_THREADS))
    try:
        yield
    finally:
        _copy_threads = old


def in_parallel(xp, n, fn):
    """Call ``fn(start, stop)`` on consecutive parts of range(n), one part per host thread.

    The parts must write disjoint memory.  NumPy: up to :func:`copy_threads` parts,
    the caller's thread taking the first, NumPy's BLAS on one thread meanwhile; CuPy,
    one thread, or a call from inside a part: one call fn(0, n).  An exception from
    any part is raised here, after every part has finished.
    """
    parts = 1 if xp is not np or getattr(_in_part, "active", False) else min(n, copy_threads())
    if parts <= 1:
        fn(0, n)
        return
    global _copy_pool
    with _pool_lock:
        if _copy_pool is None:
            _copy_pool = ThreadPoolExecutor(_MAX_COPY_THREADS - 1, thread_name_prefix="proxnp")
    bounds = [n * k // parts for k in range(parts + 1)]

    def part(start, stop):
        _in_part.active = True
        try:
            fn(start, stop)
        finally:
            _in_part.active = False

    with numpy_blas_one_thread():
        futures = [_copy_pool.submit(part, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
        try:
            part(bounds[0], bounds[1])
        finally:
            errors = [f.exception() for f in futures]     # waits for every part
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
        block = max(1, -(-n // copy_threads())) if xp is np else max(n, 1)
    starts = range(0, max(n, 1), block)
    partial = {}

    def blocks(b0, b1):                                       # blocks [b0, b1)
        for a in starts[b0:b1]:
            terms = fn(a, min(a + block, n))
            partial[b0] = terms if b0 not in partial else \
                tuple(s + t for s, t in zip(partial[b0], terms))
    in_parallel(xp, len(starts), blocks)
    total = None
    for b0 in sorted(partial):
        total = partial[b0] if total is None else tuple(s + t for s, t in zip(total, partial[b0]))
    return total
