"""Block conjugate gradient: one independent CG per column of M X = B.

    X, info = block_cg(apply_M, B, X0=None, iters=3, tol=None)

``apply_M`` is any callable mapping a block (n, s) to M @ block, with M symmetric
positive definite (SigPy-style: the solver never sees a matrix).  Column j of X is
the k-th iterate of textbook CG (Hestenes & Stiefel 1952) on M x_j = b_j, with its
own step alpha_j and conjugation coefficient beta_j:

    r_0 = b - M x_0,  p_0 = r_0
    alpha_k = <r_k, r_k> / <p_k, M p_k>
    x_{k+1} = x_k + alpha_k p_k,    r_{k+1} = r_k - alpha_k M p_k
    beta_k  = <r_{k+1}, r_{k+1}> / <r_k, r_k>,   p_{k+1} = r_{k+1} + beta_k p_k

By default it runs exactly ``iters`` iterations with no device->host
synchronisation (no Python ``if`` on array values); ``tol`` adds the authors'
early exit (stop once max_j ||r_j||^2 < tol^2 mean_j ||r_0j||^2), which needs one
host sync per iteration.  A column whose residual is exactly 0 stays put (alpha = 0,
no NaN).  ``X0`` is copied, never mutated.

``inner(a, b)`` gives the column-wise inner products <a_j, b_j> (an (s,) array); the
default is the Euclidean a_j^T b_j.  CG in another inner product -- any <a, b> = a^T H b
with H symmetric positive definite and M self-adjoint in it -- is the same loop with
another ``inner``: the fast path's range-space CG (:mod:`proxnp.fast.prox`) runs here
that way.  The residual norms recorded are sqrt(<r_k, r_k>) in that inner product.

``variant="authors"`` reproduces the CG of the authors' PyTorch code: eps = 1e-6
added to both denominators, and the first search direction is the residual
tensor itself, so the in-place residual update also changes it and the second
direction becomes (1 + beta_0) r_1 instead of r_1 + beta_0 p_0.  It is not
textbook CG and Proposition 5's guarantee is not proven for it.

:func:`scipy_cg` solves the same system column by column with SciPy's (NumPy
arrays) or CuPy's (CuPy arrays) ``cg`` through a ``LinearOperator``.
"""

import numbers
from typing import NamedTuple

from .backend import get_xp, sparse_linalg

VARIANTS = ("textbook", "authors")


class CGInfo(NamedTuple):
    iterations: int  # iterations run
    residual_norms: object  # (iterations + 1, s) array: ||r_k|| per column


def _safe_div(xp, num, den):
    """num / den where den > 0, else 0 (a converged column takes no step)."""
    ok = den > 0
    return xp.where(ok, num / xp.where(ok, den, 1), 0)


def check_cg_options(iters, tol=None, variant="textbook"):
    """Raise ValueError naming the option unless ``iters``, ``tol``, ``variant`` are allowed."""
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters < 1:
        raise ValueError(f"cg_iters must be an integer >= 1, got {iters!r}")
    if tol is not None and not (isinstance(tol, numbers.Real) and tol > 0):
        raise ValueError(f"cg_tol must be a number > 0 or None, got {tol!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown cg_variant {variant!r}; allowed: {', '.join(VARIANTS)}")


def coldot(a, b):
    """The column-wise Euclidean inner products a_j^T b_j   (s,)."""
    return (a * b).sum(axis=0)


def block_cg(apply_M, B, X0=None, iters=3, tol=None, variant="textbook", inner=coldot):
    """Run ``iters`` CG iterations on M X = B, column by column; return (X, CGInfo).

    B, X0: (n, s) arrays (a 1-D B is treated as one column).  ``inner``: the
    column-wise inner product (default Euclidean).  See the module docstring for the
    recurrences.
    """
    check_cg_options(iters, tol, variant)
    xp = get_xp(B, X0)
    one_column = B.ndim == 1
    B = B[:, None] if one_column else B
    # r and p are (n, s) blocks: column j holds r_j and p_j of the j-th CG
    if X0 is None:
        X = xp.zeros_like(B)
        r = B.copy()
    else:
        X = (X0[:, None] if one_column else X0).copy()
        r = B - apply_M(X)
    eps = 1e-6 if variant == "authors" else 0.0
    p = r.copy()
    rs_old = inner(r, r)
    norms = [xp.sqrt(xp.maximum(rs_old, 0))]  # a rounded <r, r> may dip below 0
    tol_scale = rs_old.mean() if tol is not None else None
    k = 0
    for k in range(1, int(iters) + 1):
        Mp = apply_M(p)
        alpha = _safe_div(xp, rs_old, inner(p, Mp) + eps)
        X += alpha * p
        r -= alpha * Mp
        rs_new = inner(r, r)
        norms.append(xp.sqrt(xp.maximum(rs_new, 0)))
        if k == iters:
            break
        if tol is not None and float(rs_new.max()) < tol**2 * float(tol_scale):
            break
        beta = _safe_div(xp, rs_new, rs_old + eps)
        if variant == "authors" and k == 1:
            p = (1 + beta) * r  # p_0 aliased r: it already holds r_1
        else:
            p = r + beta * p
        rs_old = rs_new
    info = CGInfo(k, xp.stack(norms))
    return (X[:, 0] if one_column else X), info


def scipy_cg(apply_M, B, X0=None, iters=3, tol=None):
    """The same solve with ``scipy.sparse.linalg.cg`` (or ``cupyx``'s for CuPy arrays).

    One call per column (both libraries take a single right-hand side), with a
    ``LinearOperator`` wrapping ``apply_M``; ``maxiter=iters`` and ``rtol=tol``
    (tiny by default, so exactly ``iters`` iterations run).  Returns X (n, s).
    """
    xp = get_xp(B, X0)
    LinearOperator, cg = sparse_linalg(xp)
    one_column = B.ndim == 1
    B = B[:, None] if one_column else B
    n, s = B.shape
    op = LinearOperator((n, n), matvec=lambda v: apply_M(v.reshape(n, 1)).reshape(n), dtype=B.dtype)
    X = xp.empty_like(B)
    for j in range(s):
        x0 = None if X0 is None else (X0[:, None] if one_column else X0)[:, j]
        X[:, j], _ = cg(
            op, B[:, j], x0=x0, maxiter=int(iters), rtol=1e-30 if tol is None else tol, atol=0.0
        )
    return X[:, 0] if one_column else X
