"""Array backend: NumPy on the CPU, CuPy on an NVIDIA GPU, one code path for both.

Every numeric function in proxnp starts with ``xp = get_xp(*arrays)``: the array
namespace follows the arrays, there is no global switch.  This is the only module
that imports CuPy, and it does so lazily, so a machine without CuPy (or without a
working GPU) never fails because of it.

    xp = get_xp(x, W)          # numpy, or cupy if x and W live on the GPU
    x_gpu = to_device(x, "gpu")
    x_cpu = to_numpy(x_gpu)

It also holds the few linear-algebra adapters whose NumPy and CuPy spellings differ
(:func:`spd_solve`, :func:`eigh`, :func:`sparse_linalg`).  How the CPU's cores are
used lives in :mod:`proxnp.fast.cpu`.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np

DEVICES = ("cpu", "gpu")

#: The type of an array in annotations: a ``numpy.ndarray`` or a ``cupy.ndarray``.  It is
#: ``Any`` so that annotating a function never imports CuPy and a checker accepts both.
Array = Any


def _cupy_module():
    """Return the cupy module if it is already imported or importable, else None."""
    try:
        import cupy  # the one lazy cupy import of the package
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return None
    return cupy


@functools.lru_cache(maxsize=1)
def gpu_status() -> tuple[bool, str]:
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


def gpu_available() -> bool:
    """True when CuPy is installed and a CUDA device runs a kernel."""
    return gpu_status()[0]


def is_cupy_array(x: object) -> bool:
    """True if ``x`` is a CuPy ndarray (checked without importing CuPy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def get_xp(*arrays: Any) -> ModuleType:
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
            "device first (to_device(x, 'gpu') or to_numpy(x))"
        )
    if n_cupy:
        return _cupy_module()
    return np


def device_of(x: Array) -> str:
    """'gpu' for a CuPy array, 'cpu' otherwise."""
    return "gpu" if is_cupy_array(x) else "cpu"


def to_device(x: Array, device: str) -> Array:
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


def to_numpy(x: Array) -> np.ndarray:
    """Return ``x`` as a NumPy array (copying from the GPU when needed)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def sparse_linalg(xp):
    """(LinearOperator, cg) of ``scipy.sparse.linalg`` or ``cupyx.scipy.sparse.linalg``."""
    if xp is np:
        from scipy.sparse.linalg import LinearOperator, cg
    else:
        from cupyx.scipy.sparse.linalg import LinearOperator, cg
    return LinearOperator, cg


def spd_solve(xp, M, B):
    """Solve M X = B for symmetric positive definite M by Cholesky (LAPACK or cuSOLVER)."""
    if xp is np:
        import scipy.linalg

        factor = scipy.linalg.cho_factor(M, lower=True, check_finite=False)
        return scipy.linalg.cho_solve(factor, B, check_finite=False)
    from cupyx.scipy.linalg import solve_triangular

    L = xp.linalg.cholesky(M)
    return solve_triangular(L, solve_triangular(L, B, lower=True), lower=True, trans="T")


def spd_inverse(xp, M):
    """M^{-1} = L^{-T} L^{-1} for symmetric positive definite M, from its Cholesky factor L.

    NumPy arrays go to LAPACK (potrf, trtri), CuPy's to cuSOLVER (cholesky) and a
    triangular solve against the identity.  Applying the inverse is then one product.
    """
    if xp is np:
        import scipy.linalg

        potrf, trtri = scipy.linalg.get_lapack_funcs(("potrf", "trtri"), (M,))
        L, info = potrf(M, lower=1, clean=1)  # clean: zeros above the diagonal
        if info == 0:
            L_inv, info = trtri(L, lower=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"matrix is not positive definite (LAPACK info {info})")
        return L_inv.T @ L_inv
    from cupyx.scipy.linalg import solve_triangular

    L = xp.linalg.cholesky(M)
    L_inv = solve_triangular(L, xp.eye(M.shape[0], dtype=M.dtype), lower=True)
    return L_inv.T @ L_inv


def eigh(xp, K):
    """Eigenvalues (ascending) and orthonormal eigenvectors of a symmetric K: (lam, Q).

    NumPy arrays go to SciPy's divide-and-conquer ``syevd``, CuPy's to cuSOLVER.
    """
    if xp is np:
        import scipy.linalg

        return scipy.linalg.eigh(K, driver="evd", check_finite=False)
    return xp.linalg.eigh(K)


def synchronize(xp):
    """Wait for queued GPU work (no-op on NumPy); use before reading a wall clock."""
    if xp is not np:
        xp.cuda.Stream.null.synchronize()
