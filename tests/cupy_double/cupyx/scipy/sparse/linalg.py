"""Test double of cupyx.scipy.sparse.linalg: LinearOperator and cg with CuPy 14.2's signatures."""

import cupy as _cp
import scipy.sparse.linalg as _ssl


class LinearOperator:
    def __init__(self, shape, matvec, rmatvec=None, matmat=None, dtype=None, rmatmat=None):
        self.shape, self.dtype, self._matvec = tuple(shape), dtype, matvec

    def matvec(self, x):
        return self._matvec(x)


def cg(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None):
    _cp._refuse_host([b, x0], "cupyx.scipy.sparse.linalg.cg")
    host_op = _ssl.LinearOperator(
        A.shape, dtype=A.dtype, matvec=lambda v: _cp._unwrap(A.matvec(_cp._wrap(v)))
    )
    x, info = _ssl.cg(
        host_op, _cp._unwrap(b), x0=_cp._unwrap(x0), rtol=rtol, atol=atol, maxiter=maxiter
    )
    return _cp._wrap(x), info
