"""The array backend: namespaces, devices, the linear-algebra adapters, the one CuPy import."""

import pathlib

import numpy as np
import pytest

import proxnp as pn
from proxnp.backend import eigh, spd_inverse, spd_solve

from conftest import assert_close


def test_cupy_imported_only_in_backend():
    root = pathlib.Path(pn.__file__).parent
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import cupy", "from cupy")):
                assert path.name == "backend.py", f"{path}: {s}"


def test_get_xp_and_unknown_device():
    assert pn.get_xp(np.zeros(2), None, 3.0) is np
    with pytest.raises(ValueError, match="unknown device"):
        pn.to_device(np.zeros(2), "tpu")


@pytest.mark.skipif(pn.gpu_available(), reason="a GPU is usable here")
def test_gpu_request_without_a_gpu_names_the_reason():
    with pytest.raises(RuntimeError, match="no GPU is usable"):
        pn.to_device(np.zeros(2), "gpu")


@pytest.mark.gpu
def test_mixed_namespaces_raise():
    import cupy

    with pytest.raises(TypeError, match="mixed NumPy and CuPy"):
        pn.get_xp(np.zeros(2), cupy.zeros(2))


def test_eigh_and_spd_solve(xp, dtype, rng):
    """The two dense factorisations behind the backend, checked by reconstruction."""
    P = rng.standard_normal((30, 50))
    K = xp.asarray((P @ P.T + 0.5 * np.eye(30)).astype(dtype))
    B = xp.asarray(rng.standard_normal((30, 4)).astype(dtype))
    tol = 1e-4 if dtype == np.float32 else 1e-11
    lam, Q = eigh(xp, K)
    assert lam.dtype == dtype and Q.dtype == dtype
    assert bool((lam[1:] >= lam[:-1]).all())
    assert_close(Q.T @ Q, xp.eye(30, dtype=dtype), atol=tol)
    assert_close((Q * lam) @ Q.T, K, rtol=tol, atol=tol * float(lam.max()))
    X = spd_solve(xp, K, B)
    assert X.dtype == dtype
    assert_close(K @ X, B, rtol=tol, atol=tol * float(xp.abs(B).max()))


def test_spd_inverse(xp, dtype, rng):
    """M^{-1} from the Cholesky factor, checked against M^{-1} M = I; non-SPD raises on NumPy."""
    P = rng.standard_normal((25, 40))
    M = xp.asarray((P @ P.T + 0.5 * np.eye(25)).astype(dtype))
    tol = 1e-3 if dtype == np.float32 else 1e-10
    M_inv = spd_inverse(xp, M)
    assert M_inv.dtype == dtype and M_inv.shape == (25, 25)
    assert_close(M_inv @ M, xp.eye(25, dtype=dtype), atol=tol)
    if xp is np:
        with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
            spd_inverse(xp, -M)
