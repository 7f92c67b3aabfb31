"""The proximal step of one affine layer (eq. 11) -- exact and by conjugate gradient.

For a hidden Linear or Conv2d layer with forward input a_prev^k, output z^k and
backpropagated error g = dJ/dz (batch-mean loss), ProxProp takes::

    theta^{k+1} = argmin_theta 1/2 ||phi(theta, a_prev^k) - z_half||^2
                               + 1/(2 tau_theta) ||theta - theta^k||^2,      (11)
    z_half = z^k - g                                                            (9)

Both layers are affine in theta: phi(theta, a_prev) = A Theta, where

* Linear: A = [a_prev, 1] (N, in+1), Theta = [W; b^T] (in+1, out);
* Conv2d: A = [P, 1] with P the im2col patch matrix (N*Ho*Wo, C*kh*kw), one row
  per output pixel, Theta = [W_mat^T; b^T] (C*kh*kw+1, F).

So (11) is ridge regression.  With beta = 1/tau_theta and the *update*
delta = Theta^{k+1} - Theta^k (since A Theta^k - z_half = g)::

    M delta = -A^T g,   M = A^T A + beta I                                     (14)

and the direction handed to the optimizer is d = -delta = M^{-1} A^T g = M^{-1} grad J
(Proposition 2, tau = 1).  Solving for delta rather than Theta^{k+1} keeps float32
accurate: Theta^{k+1} = Theta^k + small, and the direct form loses the small part.

Three ways to apply M, chosen by cost (:func:`choose_space`), with R rows, D+1 columns:

* ``"row"`` (R < D+1, the paper's MLP: N = 500 < 3073): by the push-through identity
  M^{-1} A^T = A^T (K + beta I)^{-1}, K = A A^T (R x R).  Exact: Cholesky of K + beta I
  (Woodbury).  CG: every iterate from delta = 0 lies in range(A^T), delta = A^T u, so
  CG runs on u with the inner products <A^T x, A^T y> = x^T K y and M A^T = A^T (K + beta I):
  the *same iterates* at R^2 * out per iteration, A^T applied once at the end.
* ``"gram"``: form A^T A ((D+1)^2) once; exact by Cholesky, CG on the small matrix.
* ``"matfree"`` (CG only): M X = A^T (A X) + beta X with the layer's own patch
  matrix -- one convolution and one weight-adjoint per iteration.

The bias column of ones is never materialised: A x = P x[:-1] + x[-1], and the
Gram matrices get their ones terms added analytically.
"""
import contextlib
from typing import NamedTuple

import numpy as np

from . import functional as F
from .backend import eigh, get_xp, numpy_blas_one_thread, parallel_sum, spd_solve
from .cg import block_cg, scipy_cg, CGInfo
from .layers import Conv2d, Linear

SOLVERS = ("exact", "cg", "gradient")
SPACES = ("auto", "row", "gram", "matfree")
CG_BACKENDS = ("proxnp", "scipy")
SMALL_PRODUCT = 1 << 24        # multiply-adds below which a product runs on one BLAS thread


class AffineProblem(NamedTuple):
    """The ridge problem of one layer: A = [P, 1] and the error rows g."""
    P: object   # (R, D) design matrix without the ones column
    g: object   # (R, out) backpropagated error dJ/dz as rows


def affine_problem(layer, dz):
    """Extract (P, g) from a layer after its forward pass and the upstream error dz."""
    if isinstance(layer, Linear):
        return AffineProblem(layer.cache.a_prev, dz)
    if isinstance(layer, Conv2d):
        return AffineProblem(layer.cache.cols_T.T, F.conv_rows(dz))
    raise TypeError(f"no proximal step for {layer!r}: only Linear and Conv2d are affine layers")


def theta_to_params(layer, Theta):
    """Theta (D+1, out) -> {'W': ..., 'b': ...} in the layer's own shapes."""
    W_rows, b = Theta[:-1], Theta[-1]
    if isinstance(layer, Conv2d):
        return {"W": W_rows.T.reshape(layer.params["W"].shape), "b": b}
    return {"W": W_rows, "b": b}


def params_to_theta(layer):
    """{'W', 'b'} -> Theta = [W_mat; b^T] (D+1, out)."""
    xp = get_xp(layer.params["W"])
    W = layer.params["W"]
    W_rows = W.reshape(W.shape[0], -1).T if isinstance(layer, Conv2d) else W
    return xp.concatenate([W_rows, layer.params["b"][None, :]], axis=0)


# ------------------------------------------------------------ A, A^T and Gram matrices
# A^T-products are sums over the rows of A.  A conv layer has R in the 100 000s of rows
# and few columns, so on the CPU such sums are split into blocks of rows shared among
# host threads (backend.parallel_sum: BLAS on one thread per block), and the partial
# sums are added in a fixed order.  A fully connected layer (R = batch <= D) is left to BLAS.

def apply_A(P, X):
    """A X = [P, 1] X = P X[:-1] + X[-1]   (R, s)."""
    return P @ X[:-1] + X[-1]


def apply_At(P, Y):
    """A^T Y = [P^T Y; 1^T Y]   (D+1, s).

    A tall P (R > D + 1, a conv layer) is summed over row blocks (see above); else both
    parts are written straight into the result.
    """
    xp = get_xp(P, Y)
    R, D = P.shape
    if R > D + 1:
        PtY, colsum = parallel_sum(xp, R, lambda r0, r1: (P[r0:r1].T @ Y[r0:r1],
                                                           Y[r0:r1].sum(axis=0)))
        return xp.concatenate([PtY, colsum[None, :]], axis=0)
    out = xp.empty((D + 1, Y.shape[1]), dtype=xp.result_type(P, Y))
    xp.matmul(P.T, Y, out=out[:-1])
    Y.sum(axis=0, out=out[-1])
    return out


def apply_AtA(P, X, block_rows=None):
    """A^T A X = A^T (A X)   (D+1, s): the matrix-free CG's product, in blocks of rows.

    With s small (a conv layer's 16-20 output channels), A X and A^T Y are passes over
    P (R x D; 205 MB for the ConvNet's second layer).  Per block of rows,
    A_r^T (A_r X) reads the block from memory once and from cache the second time.
    The default block holds about 4 MiB of P (a GPU takes all rows at once).  Measured
    on 2 cores, the ConvNet's second layer: 70 ms in two passes, 64 ms in blocks -- the
    products are mostly compute-bound after all: with s = 20 columns BLAS runs far
    below its peak.
    """
    xp = get_xp(P, X)
    R, D = P.shape
    if block_rows is None:
        block_rows = R if xp is not np else max(1, (1 << 22) // (D * P.itemsize))

    def block(r0, r1):
        Y_r = apply_A(P[r0:r1], X)                            # A_r X, still in cache
        return P[r0:r1].T @ Y_r, Y_r.sum(axis=0)
    PtY, colsum = parallel_sum(xp, R, block, max(1, block_rows))
    return xp.concatenate([PtY, colsum[None, :]], axis=0)


def row_gram(P):
    """K = A A^T = P P^T + 1 1^T   (R, R)."""
    return P @ P.T + 1


def col_gram(P):
    """A^T A = [[P^T P, P^T 1], [1^T P, R]]   (D+1, D+1), summed over row blocks.

    Measured for the ConvNet's second layer: 287 ms for P^T P on two BLAS threads,
    197 ms as two blocks of rows on two host threads.
    """
    xp = get_xp(P)
    R = P.shape[0]
    PtP, colsum = parallel_sum(xp, R, lambda r0, r1: (P[r0:r1].T @ P[r0:r1],  # BLAS syrk
                                                       P[r0:r1].sum(axis=0)))
    top = xp.concatenate([PtP, colsum[:, None]], axis=1)
    bottom = xp.concatenate([colsum, xp.asarray([R], dtype=P.dtype)])[None, :]
    return xp.concatenate([top, bottom], axis=0)


def choose_space(R, D1, out, solver, cg_iters):
    """The cheapest way to apply M, by multiply-add counts (see the module docstring).

    A Gram matrix X X^T costs half a general product (BLAS syrk, which NumPy uses for it).
    The matrix-free products have only ``out`` columns, which BLAS runs 2-3x slower per
    multiply-add than the Gram matrix's syrk (measured on the ConvNet's three layers,
    cg3: gram 101 / 177 / 63 ms, matfree 201 / 219 / 91 ms), so their count is tripled.
    """
    per_solve = out if solver == "exact" else cg_iters * out
    cost = {"row": R * R * D1 / 2 + R * R * per_solve,
            "gram": R * D1 * D1 / 2 + D1 * D1 * per_solve}
    if solver == "cg":
        cost["matfree"] = 3 * cg_iters * 2 * R * D1 * out
    return min(cost, key=cost.get)


# ------------------------------------------------------------------------- solvers
def range_space_cg(K, g, beta, iters, tol=None, variant="textbook", basis="auto"):
    """Block CG on M delta = A^T g from delta = 0, run in u with delta = A^T u.

    Iterates, steps and coefficients equal those of :func:`proxnp.cg.block_cg` on
    M = A^T A + beta I; only the arithmetic differs:  with q = (K + beta I) p,
    <R, R> = r^T K r and <P, M P> = (K p)^T q, and K p follows p by the same
    recursion, so each iteration costs one product with K (R^2 * out).  The
    vector updates run in place on preallocated blocks.  Returns (u, CGInfo);
    delta = A^T u.

    ``basis="eigen"`` runs the same iteration in the eigenbasis of K = Q diag(lam) Q^T
    (CG is invariant under an orthogonal change of basis): one eigendecomposition
    and two products with Q, after which every iteration is elementwise -- cheaper
    for many iterations.  ``"auto"`` picks by cost (:func:`use_eigenbasis`).
    """
    xp = get_xp(K, g)
    if basis not in ("auto", "direct", "eigen"):
        raise ValueError(f"unknown basis {basis!r}; expected 'auto', 'direct' or 'eigen'")
    if basis == "eigen" or (basis == "auto" and use_eigenbasis(K.shape[0], g.shape[1], iters, xp)):
        lam, Q = eigh(xp, K)
        lam = xp.maximum(lam, 0)[:, None]                     # K is PSD; clip rounding
        u_hat, info = _in_column_blocks(
            lambda g_blk: _range_space_cg(lambda r, out: xp.multiply(lam, r, out=out), g_blk,
                                          beta, iters, tol, variant), Q.T @ g, tol)
        return Q @ u_hat, info
    return _in_column_blocks(
        lambda g_blk: _range_space_cg(lambda r, out: xp.matmul(K, r, out=out), g_blk,
                                      beta, iters, tol, variant), g, tol)


def cg_block_width(xp, R, s, itemsize, tol=None):
    """How many right-hand sides the range-space CG takes at a time (all of them on a GPU).

    The columns are independent, so on the CPU they go in blocks whose eight work
    arrays (R x width) fit in about 8 MiB of cache, where the elementwise updates run
    faster (paired runs on the paper's MLP layer 1: cg10 in the eigenbasis, all
    elementwise, 168 -> 127 ms; cg3, dominated by the products with K, unchanged).
    The early exit ``tol`` compares all columns at once, so with it there is one block.
    """
    if tol is not None or xp is not np:
        return s
    return max(64, (1 << 20) // (R * itemsize))


def _in_column_blocks(run, g, tol):
    """run(g_block) -> (u_block, CGInfo) over blocks of columns of g; the results joined."""
    xp = get_xp(g)
    R, s = g.shape
    width = cg_block_width(xp, R, s, g.dtype.itemsize, tol)
    if width >= s:
        return run(g)
    u = xp.empty_like(g)
    norms = []
    for c0 in range(0, s, width):
        u_blk, info = run(xp.ascontiguousarray(g[:, c0:c0 + width]))
        u[:, c0:c0 + width] = u_blk
        norms.append(info.residual_norms)
    return u, CGInfo(info.iterations, xp.concatenate(norms, axis=1))


def use_eigenbasis(R, out, iters, xp=np):
    """True when eigh(K) plus two products with Q is cheaper than ``iters`` products with K.

    On the CPU an R x R symmetric eigendecomposition costs about 10 R^3 multiply-adds
    (bench/RESULTS.md: 22 ms for R = 500, against 14 ms for a 500 x 500 x 4000 product).
    On a GPU it is not chosen: there a dense eigendecomposition (cuSOLVER) is expected to
    cost far more than products with K, which run at the card's full speed -- to be
    confirmed by ``bench/step.py --device gpu --pieces``.
    """
    if xp is not np:
        return False
    return 10 * R ** 3 + 2 * R * R * out < iters * R * R * out


def _range_space_cg(apply_K, g, beta, iters, tol, variant):
    """The iteration of :func:`range_space_cg` for any apply_K(r, out) = K r."""
    xp = get_xp(g)
    eps = 1e-6 if variant == "authors" else 0.0

    def coldot(a, b):                                       # column-wise a_j^T b_j
        return xp.einsum("ij,ij->j", a, b)

    u = xp.zeros_like(g)
    r, p, q, tmp = g.copy(), g.copy(), xp.empty_like(g), xp.empty_like(g)
    Kr = apply_K(r, xp.empty_like(g))
    Kp = Kr.copy()
    rs_old = coldot(r, Kr)
    norms = [xp.sqrt(rs_old)]
    tol_scale = rs_old.mean() if tol is not None else None
    k = 0
    for k in range(1, int(iters) + 1):
        xp.multiply(p, beta, out=q)
        q += Kp                                               # q = (K + beta I) p
        den = coldot(Kp, q) + eps                             # <P, M P>
        ok = den > 0
        alpha = xp.where(ok, rs_old / xp.where(ok, den, 1), 0)
        u += xp.multiply(p, alpha, out=tmp)                   # u += alpha p
        if k == iters:                                        # the last residual is not needed
            break
        r -= xp.multiply(q, alpha, out=tmp)                   # r -= alpha q
        apply_K(r, Kr)
        rs_new = coldot(r, Kr)                                # <R, R>
        norms.append(xp.sqrt(xp.maximum(rs_new, 0)))
        if tol is not None and float(rs_new.max()) < tol ** 2 * float(tol_scale):
            break
        ok = rs_old + eps > 0
        b = xp.where(ok, rs_new / xp.where(ok, rs_old + eps, 1), 0)
        if variant == "authors" and k == 1:                   # p_0 aliased r_0
            b = b + 1
            xp.multiply(r, b, out=p)
            xp.multiply(Kr, b, out=Kp)
        else:
            p *= b                                            # p = r + b p
            p += r
            Kp *= b
            Kp += Kr
        rs_old = rs_new
    return u, CGInfo(k, xp.stack(norms))


def prox_direction(P, g, tau_theta, solver="cg", cg_iters=3, space="auto",
                   cg_backend="proxnp", cg_variant="textbook", cg_tol=None):
    """The ProxProp direction d = Theta^k - Theta^{k+1} = M^{-1} A^T g (D+1, out).

    P (R, D) and g (R, out) as in :class:`AffineProblem`.  ``solver``: "exact",
    "cg" (``cg_iters`` iterations of block CG from delta = 0, one column per output
    unit) or "gradient" (d = A^T g, the explicit step).  ``space``: "auto" picks
    the cheapest of "row", "gram" and "matfree".  Returns (d, info or None).
    """
    xp = get_xp(P, g)
    beta = 1.0 / tau_theta
    R, D1, out = P.shape[0], P.shape[1] + 1, g.shape[1]
    if solver == "gradient":
        return apply_At(P, g), None                           # explicit step: grad J
    if space == "auto":
        space = choose_space(R, D1, out, solver, cg_iters)
    if cg_backend == "scipy" and space == "row":
        space = "gram"                                        # SciPy's cg works on theta
    if space == "row":
        K_beta = row_gram(P)
        if solver == "exact":                                 # Woodbury / push-through
            K_beta[xp.diag_indices(R)] += beta
            return apply_At(P, spd_solve(xp, K_beta, g)), None
        u, info = range_space_cg(K_beta, g, beta, cg_iters, cg_tol, cg_variant)
        return apply_At(P, u), info
    if space == "gram":
        M = col_gram(P)
        M[xp.diag_indices(D1)] += beta
        if solver == "exact":
            return spd_solve(xp, M, apply_At(P, g)), None

        def apply_M(X):
            return M @ X
    elif space == "matfree":
        if solver == "exact":
            raise ValueError("the exact solver needs space 'row' or 'gram', not 'matfree'")

        def apply_M(X):
            return apply_AtA(P, X) + beta * X
    else:
        raise ValueError(f"unknown space {space!r}; expected one of {SPACES}")
    rhs = apply_At(P, g)                                      # = grad_Theta J
    # A conv layer's Gram-space CG products are small ((D+1)^2 * out ~ 5e6): on one BLAS
    # thread, so that no OpenBLAS worker is left spinning (~0.1 s) on a core that the next
    # layer's host threads need (ConvNet cg3 step, two paired runs: 0.76/0.78 -> 0.74/0.64 s).
    small = xp is np and space == "gram" and D1 * D1 * out < SMALL_PRODUCT
    with numpy_blas_one_thread() if small else contextlib.nullcontext():
        if cg_backend == "scipy":
            return scipy_cg(apply_M, rhs, iters=cg_iters, tol=cg_tol), None
        return block_cg(apply_M, rhs, iters=cg_iters, tol=cg_tol, variant=cg_variant)


def prox_objective(P, z_half, Theta, Theta_k, tau_theta):
    """1/2 ||A Theta - z_half||^2 + 1/(2 tau_theta) ||Theta - Theta_k||^2   (eq. 11)."""
    res = apply_A(P, Theta) - z_half
    diff = Theta - Theta_k
    return 0.5 * (res * res).sum() + 0.5 / tau_theta * (diff * diff).sum()
