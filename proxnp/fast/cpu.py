"""The CPU's plumbing: how many threads an operation gets, BLAS thread counts, host
threads, fork handling and glibc's malloc.

None of this changes a number; it only decides how the fast kernels
(:mod:`proxnp.fast.layers`, :mod:`proxnp.fast.prox`) use the cores.

* :func:`threads_for` is the one place that decides how many threads an operation gets,
  from its size and from what the machine says (the thread policy below).
* :func:`blas_threads` runs a block's products on that many BLAS threads;
  :func:`in_parallel` / :func:`parallel_sum` split work over the batch on that many host
  threads.  The im2col/col2im copies and max pooling are memory-bound strided copies with
  short inner rows, which NumPy runs on one core; NumPy releases the GIL inside them, so
  each thread copies (and multiplies) its share of the batch.  Inside a part NumPy's BLAS
  runs on one thread: the parts are the parallelism, never BLAS threads and host threads
  against each other.  (Left multi-threaded, OpenBLAS keeps a worker spinning after every
  product, which starves the copies on the other core.)
* :func:`threads` forces a number for BLAS and the host threads (the command line's
  ``--threads``); :func:`limit_threads` is the same.
* :func:`numpy_blas_one_thread`, :func:`scipy_single_thread`: NumPy's and SciPy's wheels
  each bundle their own OpenBLAS; a threaded SciPy call right after a NumPy product fights
  NumPy's still-spinning threads for the cores, so such calls run on one thread.
* :func:`reuse_host_memory`: glibc's ``mallopt``, so large temporaries are reused.

The thread policy.  A second thread pays only when its share of the work outlasts the cost
of meeting the first one again.  On an idle core that cost is microseconds; on a core that
another program holds, it is a scheduler time slice (milliseconds), paid at every
synchronisation point of a threaded BLAS call or host-thread section.  So:

1. The cores proxnp may use: the user's ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` when
   set (the user's number wins), else the CPUs of ``os.sched_getaffinity`` capped by the
   cgroup's CPU quota (``cpu.max``, or v1's ``cpu.cfs_quota_us``: a container's or a
   JupyterHub server's limit); at most :data:`MAX_HOST_THREADS` host threads.
2. Of these, only the cores that other programs leave free: the number of runnable tasks of
   other processes (``/proc/loadavg``'s running count less this process's running threads),
   sampled at most every :data:`SAMPLE_SECONDS` and averaged over about
   :data:`SMOOTHING_SECONDS`, so a new neighbour is noticed within a second or two and a
   departed one likewise.  Elsewhere the one-minute load average stands in.
3. Each thread must get at least :data:`MIN_MACS_PER_THREAD` multiply-adds of the operation.
4. An operation that gives every usable core at least :data:`LARGE_MACS_PER_THREAD`
   multiply-adds (tens of milliseconds of work each, such as the paper MLP's 500 x 3072 x
   4000 product) runs on every usable core whatever the load: a time slice lost at its one
   synchronisation point is small beside the work, and under fair scheduling two threads
   beside busy programs get more of the machine than one.

On an idle machine that is every core for the paper's large products and convolutions and
one thread for small ones (a digits-sized product loses to a second thread even there); with
the cores taken, it is one thread, which then gets its fair share from the scheduler.

On a GPU none of this applies: a kernel is already parallel, so every function here
runs a CuPy computation as one call.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MAX_HOST_THREADS = 8
MIN_MACS_PER_THREAD = 1 << 21  # multiply-adds (or element visits) a thread must get
LARGE_MACS_PER_THREAD = 1 << 29  # a share that outlasts a scheduler time slice many times
SAMPLE_SECONDS = 0.1  # the machine's running tasks are counted at most this often
SMOOTHING_SECONDS = 2.0  # time constant of their running average
CORES_SECONDS = 5.0  # the affinity and the cgroup quota are read again after this long

LOADAVG = "/proc/loadavg"
OWN_TASKS = "/proc/self/task"
CGROUP_V2_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_DIRS = ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct")
USER_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")

_forced = None  # set by threads(n); None: the policy decides
_others = {"mean": None, "at": -math.inf}  # running average of other processes' tasks
_cores = {"usable": None, "cpus": None, "at": -math.inf}  # usable_cores(), _affinity()
_session = {"depth": 0, "counts": 0, "known": {}}  # open blocks; counts set in the session
_pool = None
_in_part = threading.local()  # set inside a part: nested sections run serially
_pool_lock = threading.Lock()


# ------------------------------------------------------------------ what the machine says
def user_threads():
    """The thread count the user set in ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS``
    (the first set, as OpenBLAS reads them), or None.  A value that is not a positive
    integer is ignored, as OpenBLAS ignores it."""
    for name in USER_THREAD_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                n = int(value.split(",")[0])  # OpenMP allows a list: the first level
            except ValueError:
                continue
            if n > 0:
                return n
    return None


def cpu_quota():
    """The cgroup's CPU limit in cores (a container's or a JupyterHub server's), or None.

    cgroup v2 ``cpu.max`` reads "quota period" or "max period"; v1 has
    ``cpu.cfs_quota_us`` (-1: none) and ``cpu.cfs_period_us``.
    """
    try:
        with open(CGROUP_V2_MAX) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in CGROUP_V1_DIRS:
        try:
            with open(os.path.join(folder, "cpu.cfs_quota_us")) as f:
                quota = int(f.read())
            with open(os.path.join(folder, "cpu.cfs_period_us")) as f:
                period = int(f.read())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def _affinity():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def usable_cores():
    """The cores proxnp may use: the user's OPENBLAS/OMP_NUM_THREADS, else the CPUs this
    process may run on (``os.sched_getaffinity``) capped by the cgroup's CPU quota."""
    user = user_threads()
    return _system_cores() if user is None else user


def _system_cores():
    quota = cpu_quota()
    cores = _affinity()
    return cores if quota is None else max(1, min(cores, int(quota)))


def _cores_now(now=None):
    """(:func:`usable_cores`, CPUs of the affinity), read again every :data:`CORES_SECONDS`
    (the user's variables at every call: they are cheap to read)."""
    now = time.monotonic() if now is None else now
    if now - _cores["at"] >= CORES_SECONDS:
        _cores.update(usable=_system_cores(), cpus=_affinity(), at=now)
    user = user_threads()
    return (_cores["usable"] if user is None else user), _cores["cpus"]


def _count_others():
    """Runnable tasks of other processes now, or None where /proc cannot tell.

    /proc/loadavg's fourth field is "running/total" over the whole machine, counted at
    the moment of reading; this process's running threads (the reader among them, and
    BLAS workers still spinning) are taken off.
    """
    try:
        with open(LOADAVG) as f:
            running = int(f.read().split()[3].split("/")[0])
        own = 0
        for task in os.listdir(OWN_TASKS):
            try:
                with open(os.path.join(OWN_TASKS, task, "stat")) as f:
                    stat = f.read()
            except OSError:  # the thread has just ended
                continue
            own += stat[stat.rindex(")") + 2 : stat.rindex(")") + 3] == "R"
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - own)


def busy_elsewhere(now=None):
    """Cores of this process's CPU set that other programs keep busy (a running average).

    Sampled at most every :data:`SAMPLE_SECONDS`, averaged with time constant
    :data:`SMOOTHING_SECONDS`; the machine-wide count is scaled to the share of the CPUs
    this process may run on.  Without /proc: the one-minute load average less one (this
    process), a slower guide.
    """
    now = time.monotonic() if now is None else now
    state = _others
    if now - state["at"] >= SAMPLE_SECONDS:
        count = _count_others()
        if count is None:
            try:
                count = max(0.0, os.getloadavg()[0] - 1)
            except (AttributeError, OSError):
                count = 0.0
        count *= _cores_now(now)[1] / (os.cpu_count() or 1)
        if state["mean"] is None:
            state["mean"] = float(count)
        else:
            weight = 1 - math.exp(-(now - state["at"]) / SMOOTHING_SECONDS)
            state["mean"] += weight * (count - state["mean"])
        state["at"] = now
    return state["mean"]


def threads_for(macs=None):
    """How many threads (BLAS or host) an operation of ``macs`` multiply-adds should use.

    The one place that decides.  Forced by :func:`threads`; else the cores proxnp may use
    (:func:`usable_cores`), less those other programs keep busy (:func:`busy_elsewhere`),
    and no more than give each thread :data:`MIN_MACS_PER_THREAD`; every usable core when
    each gets :data:`LARGE_MACS_PER_THREAD`, whatever the load.  ``macs=None``: an
    operation large enough for every core.  At least 1.
    """
    if _forced is not None:
        return _forced
    usable, cpus = _cores_now()
    cores = usable if macs is None else min(usable, int(macs // MIN_MACS_PER_THREAD))
    if cores <= 1:
        return 1
    if macs is not None and macs >= LARGE_MACS_PER_THREAD * usable:
        return usable  # rule 4: the work outlasts any wait for a parked thread
    free = max(cpus, usable) - busy_elsewhere()  # others' count is of our CPU set
    return max(1, min(cores, int(free + 0.5)))


def host_threads():
    """The most host threads :func:`in_parallel` uses: the forced number, else
    :func:`usable_cores` (at most :data:`MAX_HOST_THREADS`); the load may give fewer."""
    n = _forced if _forced is not None else _cores_now()[0]
    return max(1, min(n, MAX_HOST_THREADS))


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
def _blas_count(libs, n):
    """Run ``libs`` on ``n`` threads inside the block; each library's count restored after,
    except for an outermost block inside :func:`blas_session`: there the count is left for
    the next operation, which sets its own."""
    lazy = _session["depth"] and _session["counts"] == 0
    known = _session["known"]
    if lazy and all(known.get(id(lib)) == n for lib in libs):
        yield  # set so by an earlier operation of this session: nothing to do
        return
    old = [lib.num_threads for lib in libs]
    for lib, k in zip(libs, old):
        if k != n:
            lib.set_num_threads(n)
    _session["counts"] += 1
    try:
        yield
    finally:
        _session["counts"] -= 1
        if lazy:
            known.update((id(lib), n) for lib in libs)
        else:
            for lib, k in zip(libs, old):
                if k != n:
                    lib.set_num_threads(k)


@contextlib.contextmanager
def blas_session():
    """A block of proxnp's work (a training step, an epoch): its operations leave the BLAS
    thread counts as they set them, and the counts from before the block come back after it.

    Changing a count costs tens of microseconds, as much as a small product; between two
    operations of a step it need not be undone.  Blocks nest (the outermost restores).
    """
    libs = _blas_libs(of_numpy=True) + _blas_libs(of_numpy=False)
    old = [lib.num_threads for lib in libs]
    if not _session["depth"]:
        _session["known"] = {}
    _session["depth"] += 1
    try:
        yield
    finally:
        _session["depth"] -= 1
        if not _session["depth"]:
            _session["known"] = {}
            for lib, k in zip(libs, old):
                if lib.num_threads != k:
                    lib.set_num_threads(k)


def blas_threads(xp, macs):
    """Run the block's NumPy products on :func:`threads_for`\\ (macs) BLAS threads.

    ``macs``: the multiply-adds of one product in the block.  CuPy: nothing to do.
    """
    if xp is not np:
        return contextlib.nullcontext()
    return _blas_count(_blas_libs(of_numpy=True), threads_for(macs))


def scipy_single_thread():
    """Run SciPy's own BLAS/LAPACK on one thread inside the block."""
    return _blas_count(_blas_libs(of_numpy=False), 1)


def numpy_blas_one_thread():
    """Run NumPy's BLAS on one thread inside the block (host-thread parts)."""
    return _blas_count(_blas_libs(of_numpy=True), 1)


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Context manager: exactly ``n`` threads for proxnp's BLAS calls and host threads.

    Inside it the thread policy (:func:`threads_for`) is off: every operation proxnp
    runs gets ``n`` threads (host threads at most :data:`MAX_HOST_THREADS`), and BLAS is
    capped at ``n`` for the user's own products too.  Blocks nest; each restores what was
    before.  ``None`` leaves everything as it is.  The command line's ``--threads``::

        with proxnp.threads(1):
            pn.proxprop(model, loss_fn, x, y)
    """
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"threads needs a positive whole number or None, got {n!r}")
    global _forced
    from threadpoolctl import threadpool_limits

    old = _forced
    with threadpool_limits(limits=int(n), user_api="blas"):
        _forced = int(n)
        try:
            yield
        finally:
            _forced = old


limit_threads = threads  # the same context manager, under the name the lessons use


# ------------------------------------------------------------------------ host threads
def _forget_threads_in_child():
    """A forked child has none of the parent's threads: start a new pool when needed, and
    count the machine's running tasks afresh."""
    global _pool
    _pool = None
    _others.update(mean=None, at=-math.inf)
    _cores.update(at=-math.inf)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads_in_child)


def _parts(xp, n, macs):
    """How many host-thread parts a section over range(n) of ``macs`` work takes."""
    if xp is not np or getattr(_in_part, "active", False):
        return 1
    return max(1, min(n, host_threads(), threads_for(macs)))


def in_parallel(xp, n, fn, macs=None):
    """Call ``fn(start, stop)`` on consecutive parts of range(n), one part per host thread.

    The parts must write disjoint memory.  ``macs``: the section's work in multiply-adds
    (or element visits), from which :func:`threads_for` decides the parts (None: large).
    NumPy: that many parts, the caller's thread taking the first, NumPy's BLAS on one
    thread meanwhile; one part: one call fn(0, n) with its products on
    :func:`threads_for`\\ (macs) BLAS threads.  CuPy, or a call from inside a part: one
    call fn(0, n).  An exception from any part is raised here, after every part has
    finished.
    """
    _run_parts(xp, n, fn, _parts(xp, n, macs), macs)


def _run_parts(xp, n, fn, parts, macs):
    """fn over ``parts`` consecutive parts of range(n) (see :func:`in_parallel`)."""
    if parts <= 1:
        nested = getattr(_in_part, "active", False)  # BLAS is on one thread already
        with contextlib.nullcontext() if nested else blas_threads(xp, macs):
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


def parallel_sum(xp, n, fn, block=None, macs=None):
    """The sum over blocks [a, b) of range(n) of fn(a, b), a tuple of arrays.

    ``block=None``: one block per host thread; else blocks of that many, shared among
    the threads (:func:`in_parallel`; ``macs`` as there).  Each thread adds up its own
    blocks, and the partial sums are added in a fixed order, so a result does not depend
    on timing.
    """
    starts_n = max(n, 1)
    parts = _parts(xp, starts_n if block is None else -(-starts_n // block), macs)
    if block is None:
        block = max(1, -(-n // parts)) if xp is np else starts_n
    starts = range(0, starts_n, block)
    partial = {}

    def blocks(b0, b1):  # blocks [b0, b1)
        for a in starts[b0:b1]:
            terms = fn(a, min(a + block, n))
            partial[b0] = (
                terms if b0 not in partial else tuple(s + t for s, t in zip(partial[b0], terms))
            )

    _run_parts(xp, len(starts), blocks, min(parts, len(starts)), macs)
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
