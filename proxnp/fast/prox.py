"""Fast proximal steps: the directions of :mod:`proxnp.prox`, computed faster.

Same signatures and directions (up to rounding) as the reference; what differs is how.
(One visible difference: the range-space CG never computes the last residual, so its
``CGInfo.residual_norms`` has ``iterations`` rows where :func:`proxnp.cg.block_cg` has one more.)

* **Range-space CG** (``space="row"``, R < D+1): every CG iterate from delta = 0 lies in
  range(A^T), delta = A^T u, so CG runs on u with the inner products
  <A^T x, A^T y> = x^T K y and M A^T = A^T (K + beta I), K = A A^T: the *same iterates*
  at R^2 * out per iteration, A^T applied once at the end (:func:`range_space_cg`).
  For many iterations it runs in the eigenbasis of K, where every iteration is
  elementwise (:func:`use_eigenbasis`), and there, on the CPU, the columns go in
  cache-sized blocks (:func:`cg_block_width`).
* **A cost model** (:func:`choose_space`) picks the cheapest of "row", "gram" and
  "matfree" by multiply-add counts.
* **Sums over rows on host threads**: a conv layer has R in the 100 000s and few
  columns, so A^T Y, A^T A and A^T A X are summed over blocks of rows shared among
  host threads (:func:`proxnp.fast.cpu.parallel_sum`), in a fixed order.
* **Threads that pay**: the solve's products run on the BLAS threads that
  :func:`proxnp.fast.cpu.threads_for` grants a product of their size -- a conv layer's
  small Gram-space CG products on one, so that no OpenBLAS worker is left spinning on a
  core the next layer's host threads need.
"""

import numpy as np

from ..backend import eigh, get_xp, spd_inverse, spd_solve
from ..cg import CGInfo, block_cg, scipy_cg
from ..prox import apply_A, check_solver_and_space, row_gram
from .cpu import blas_threads, parallel_sum, scipy_single_thread

BLOCK_BYTES = 1 << 22  # rows of P per block of apply_AtA: about 4 MiB
CG_BLOCK_BYTES = 1 << 23  # the range-space CG's eight work arrays per column block


# ------------------------------------------------------------ A^T-products over row blocks
def apply_At(P, Y):
    """A^T Y = [P^T Y; 1^T Y]   (D+1, s); a tall P (R > D+1) summed over row blocks."""
    xp = get_xp(P, Y)
    R, D = P.shape
    if R > D + 1:
        PtY, colsum = parallel_sum(
            xp,
            R,
            lambda r0, r1: (P[r0:r1].T @ Y[r0:r1], Y[r0:r1].sum(axis=0)),
            macs=P.size * Y.shape[1],
        )
        return xp.concatenate([PtY, colsum[None, :]], axis=0)
    out = xp.empty((D + 1, Y.shape[1]), dtype=xp.result_type(P, Y))
    xp.matmul(P.T, Y, out=out[:-1])
    Y.sum(axis=0, out=out[-1])
    return out


def apply_AtA(P, X, block_rows=None):
    """A^T A X = A^T (A X)   (D+1, s): the matrix-free CG's product, in blocks of rows.

    Per block of rows, A_r^T (A_r X) reads the block from memory once and from cache
    the second time.  The default block holds about 4 MiB of P (a GPU takes all rows).
    """
    xp = get_xp(P, X)
    R, D = P.shape
    if block_rows is None:
        block_rows = R if xp is not np else max(1, BLOCK_BYTES // (D * P.itemsize))

    def block(r0, r1):
        Y_r = apply_A(P[r0:r1], X)  # A_r X, still in cache
        return P[r0:r1].T @ Y_r, Y_r.sum(axis=0)

    PtY, colsum = parallel_sum(xp, R, block, max(1, block_rows), macs=2 * P.size * X.shape[1])
    return xp.concatenate([PtY, colsum[None, :]], axis=0)


def col_gram(P):
    """A^T A = [[P^T P, P^T 1], [1^T P, R]]   (D+1, D+1), summed over row blocks."""
    xp = get_xp(P)
    R = P.shape[0]
    PtP, colsum = parallel_sum(
        xp,
        R,
        lambda r0, r1: (
            P[r0:r1].T @ P[r0:r1],  # BLAS syrk
            P[r0:r1].sum(axis=0),
        ),
        macs=P.size * P.shape[1] // 2,
    )
    top = xp.concatenate([PtP, colsum[:, None]], axis=1)
    bottom = xp.concatenate([colsum, xp.asarray([R], dtype=P.dtype)])[None, :]
    return xp.concatenate([top, bottom], axis=0)


def choose_space(R, D1, out, solver, cg_iters):
    """The cheapest way to apply M, by multiply-add counts.

    A Gram matrix X X^T costs half a general product (BLAS syrk).  The matrix-free
    products have only ``out`` columns, which BLAS runs well below its peak, so their
    count is tripled (bench/RESULTS.md has the per-layer timings behind the factor).
    """
    per_solve = out if solver == "exact" else cg_iters * out
    cost = {
        "row": R * R * D1 / 2 + R * R * per_solve,
        "gram": R * D1 * D1 / 2 + D1 * D1 * per_solve,
    }
    if solver == "cg":
        cost["matfree"] = 3 * cg_iters * 2 * R * D1 * out
    return min(cost, key=cost.get)


# -------------------------------------------------------------------- range-space CG
def range_space_cg(K, g, beta, iters, tol=None, variant="textbook", basis="auto"):
    """Block CG on M delta = A^T g from delta = 0, run in u with delta = A^T u.

    Iterates, steps and coefficients equal those of :func:`proxnp.cg.block_cg` on
    M = A^T A + beta I; only the arithmetic differs:  with q = (K + beta I) p, the
    parameter-space inner products are <A^T r, A^T r> = r^T K r and
    <A^T p, M A^T p> = (K p)^T q, and K p follows p by the same recursion, so each
    iteration costs one product with K (R^2 * out).  The vector updates run in place
    on preallocated blocks.  Returns (u, CGInfo); delta = A^T u.
    The last residual is never needed, so it is not computed: ``residual_norms`` has
    ``iterations`` rows (||A^T r_k||, k < iterations) where block_cg's has one more.

    ``basis="eigen"`` runs the same iteration in the eigenbasis of K = Q diag(lam) Q^T
    (CG is invariant under an orthogonal change of basis): one eigendecomposition
    and two products with Q, after which every iteration is elementwise.  ``"auto"``
    picks by cost (:func:`use_eigenbasis`).
    """
    xp = get_xp(K, g)
    if basis not in ("auto", "direct", "eigen"):
        raise ValueError(f"unknown basis {basis!r}; expected 'auto', 'direct' or 'eigen'")
    if basis == "eigen" or (basis == "auto" and use_eigenbasis(K.shape[0], g.shape[1], iters, xp)):
        with scipy_single_thread():
            lam, Q = eigh(xp, K)
        lam = xp.maximum(lam, 0)[:, None]  # K is PSD; clip rounding
        u_hat, info = _in_column_blocks(
            lambda g_blk: _range_space_cg(
                lambda r, out: xp.multiply(lam, r, out=out), g_blk, beta, iters, tol, variant
            ),
            Q.T @ g,
            tol,
        )
        return Q @ u_hat, info
    return _range_space_cg(lambda r, out: xp.matmul(K, r, out=out), g, beta, iters, tol, variant)


def cg_block_width(xp, R, s, itemsize, tol=None):
    """How many right-hand sides the eigenbasis CG takes at a time.

    The columns are independent, so on the CPU they go in blocks whose eight work arrays
    (R x width) fit in the cache, where the elementwise iterations run faster.  (In the
    direct basis each iteration is one product with K, which runs best on all columns.)
    The early exit ``tol`` compares all columns at once, so with it, and on a GPU, there
    is one block.
    """
    if tol is not None or xp is not np:
        return s
    return max(64, CG_BLOCK_BYTES // (8 * R * itemsize))


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
        u_blk, info = run(xp.ascontiguousarray(g[:, c0 : c0 + width]))
        u[:, c0 : c0 + width] = u_blk
        norms.append(info.residual_norms)
    return u, CGInfo(info.iterations, xp.concatenate(norms, axis=1))


def use_eigenbasis(R, out, iters, xp=np):
    """True when eigh(K) plus two products with Q is cheaper than ``iters`` products with K.

    On the CPU an R x R symmetric eigendecomposition costs about as much as 10 R^3
    multiply-adds of a product.  On a GPU it is not chosen: a dense eigendecomposition
    (cuSOLVER) runs far below the card's speed for products.
    """
    if xp is not np:
        return False
    return 10 * R**3 + 2 * R * R * out < iters * R * R * out


def _range_space_cg(apply_K, g, beta, iters, tol, variant):
    """The iteration of :func:`range_space_cg` for any apply_K(r, out) = K r."""
    xp = get_xp(g)
    eps = 1e-6 if variant == "authors" else 0.0

    def coldot(a, b):  # column-wise a_j^T b_j
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
        q += Kp  # q = (K + beta I) p
        den = coldot(Kp, q) + eps  # <p, M p>
        ok = den > 0
        alpha = xp.where(ok, rs_old / xp.where(ok, den, 1), 0)
        u += xp.multiply(p, alpha, out=tmp)  # u += alpha p
        if k == iters:  # the last residual is not needed
            break
        r -= xp.multiply(q, alpha, out=tmp)  # r -= alpha q
        apply_K(r, Kr)
        rs_new = coldot(r, Kr)  # <r, r>
        norms.append(xp.sqrt(xp.maximum(rs_new, 0)))
        if tol is not None and float(rs_new.max()) < tol**2 * float(tol_scale):
            break
        ok = rs_old + eps > 0
        b = xp.where(ok, rs_new / xp.where(ok, rs_old + eps, 1), 0)
        if variant == "authors" and k == 1:  # p_0 aliased r_0
            b = b + 1
            xp.multiply(r, b, out=p)
            xp.multiply(Kr, b, out=Kp)
        else:
            p *= b  # p = r + b p
            p += r
            Kp *= b
            Kp += Kr
        rs_old = rs_new
    return u, CGInfo(k, xp.stack(norms))


# ------------------------------------------------------------------------- the solver
def woodbury_inverse(K_beta):
    """(K + beta I)^{-1} for the row space's small SPD matrix (R x R), from its Cholesky
    factor (:func:`proxnp.backend.spd_inverse`).

    Applying it is then a product, which runs on every BLAS thread, where two triangular
    solves with a wide right-hand side would run on one.
    """
    with scipy_single_thread():
        return spd_inverse(get_xp(K_beta), K_beta)


def woodbury_solve(K_beta, g):
    """(K + beta I)^{-1} g as one product with :func:`woodbury_inverse`."""
    return woodbury_inverse(K_beta) @ g


def prox_direction(
    P,
    g,
    tau_theta,
    solver="cg",
    cg_iters=3,
    space="auto",
    cg_backend="proxnp",
    cg_variant="textbook",
    cg_tol=None,
):
    """The direction of :func:`proxnp.prox.prox_direction`, computed the fast way.

    ``space="auto"`` takes the cost model :func:`choose_space`; ``"row"`` with CG runs
    the range-space CG.  Returns (d, CGInfo or None).
    """
    xp = get_xp(P, g)
    R, D1, out = P.shape[0], P.shape[1] + 1, g.shape[1]
    with blas_threads(xp, R * D1 * out):  # the size of the weight gradient's product
        return _prox_direction(
            P, g, tau_theta, solver, cg_iters, space, cg_backend, cg_variant, cg_tol
        )


def _prox_direction(P, g, tau_theta, solver, cg_iters, space, cg_backend, cg_variant, cg_tol):
    xp = get_xp(P, g)
    beta = 1.0 / tau_theta
    R, D1, out = P.shape[0], P.shape[1] + 1, g.shape[1]
    check_solver_and_space(solver, space)
    if solver == "gradient":
        return apply_At(P, g), None  # explicit step: grad J
    if space == "auto":
        space = choose_space(R, D1, out, solver, cg_iters)
    if cg_backend == "scipy" and space == "row":
        space = "gram"  # SciPy's cg works on Theta
    if space == "row":
        K_beta = row_gram(P)
        if solver == "exact":  # Woodbury / push-through
            K_beta[xp.diag_indices(R)] += beta
            if D1 < out:  # A^T (K + beta I)^{-1} first:
                return apply_At(P, woodbury_inverse(K_beta)) @ g, None  # (D+1) R^2 < R^2 out
            return apply_At(P, woodbury_solve(K_beta, g)), None
        u, info = range_space_cg(K_beta, g, beta, cg_iters, cg_tol, cg_variant)
        return apply_At(P, u), info
    if space == "gram":
        M = col_gram(P)
        M[xp.diag_indices(D1)] += beta
        if solver == "exact":
            with scipy_single_thread():
                return spd_solve(xp, M, apply_At(P, g)), None

        def apply_M(X):
            return M @ X
    else:  # "matfree"
        if solver == "exact":
            raise ValueError("the exact solver needs space 'row' or 'gram', not 'matfree'")

        def apply_M(X):
            return apply_AtA(P, X) + beta * X

    rhs = apply_At(P, g)  # = grad_Theta J
    product = D1 * D1 * out if space == "gram" else 2 * R * D1 * out  # one apply_M
    with blas_threads(xp, product):
        if cg_backend == "scipy":
            return scipy_cg(apply_M, rhs, iters=cg_iters, tol=cg_tol), None
        return block_cg(apply_M, rhs, iters=cg_iters, tol=cg_tol, variant=cg_variant)
