"""Fast proximal steps: the directions of :mod:`proxnp.prox`, computed faster.

Same signatures, directions (up to rounding) and CG records as the reference; what
differs is how.  The solver table :data:`SOLVERS` is :data:`proxnp.prox.SOLVERS` with
each entry's solve function replaced; the CG loop is :func:`proxnp.cg.block_cg`, to
which the fast path hands a cheaper operator and inner product.

* **Range-space CG** (``space="row_gram"``, R < D+1): every CG iterate from delta = 0
  lies in range(A^T), delta = A^T u, so CG runs on u with the inner products
  <A^T x, A^T y> = x^T K y and M A^T = A^T (K + I/tau_theta), K = A A^T: the *same
  iterates* at R^2 * out per iteration, A^T applied once at the end
  (:func:`range_space_cg`).
  Textbook CG of up to :data:`SSTEP_MAX` steps runs as one s-step block: s + 1
  products with K give Chebyshev moments of a basis from which K's outlying top
  eigenpair is deflated (:func:`sstep_cg`), or an eigendecomposition of K gives them
  without products (:func:`eigen_sstep_cg`), whichever is cheaper (:func:`sstep_form`);
  the s x s systems are float64 -- as accurate as CG in exact arithmetic, also for
  float32 data.  Otherwise (the authors' variant, an early exit, a GPU) the loop runs,
  for many iterations in the eigenbasis, where every iteration is elementwise
  (:func:`use_eigenbasis`) and, on the CPU, the columns go in cache-sized blocks
  (:func:`cg_block_width`).
* **K from centred rows** (:func:`row_gram_float64`): float32 rounding at the scale of
  K's bulk, not of its outlying eigenvalue.
* **A cost model** (:func:`choose_space`) picks the cheapest of "row_gram", "col_gram"
  and "matfree" by multiply-add counts.
* **Sums over rows on host threads**: a conv layer has R in the 100 000s and few
  columns, so A^T Y, A^T A and A^T A X -- the reference's :func:`proxnp.prox.apply_At`
  and :func:`proxnp.prox.col_gram` on each block -- are summed over blocks of rows
  shared among host threads (:func:`proxnp.fast.cpu.parallel_sum`), in a fixed order.
* **Threads that pay**: the solve's products run on the BLAS threads that
  :func:`proxnp.fast.cpu.threads_for` grants a product of their size -- a conv layer's
  small Gram-space CG products on one, so that no OpenBLAS worker is left spinning on a
  core the next layer's host threads need.
"""

import numpy as np

from .. import prox
from ..backend import eigh, get_xp, spd_inverse, spd_solve
from ..cg import CGInfo, block_cg, scipy_cg
from ..prox import apply_A, row_gram
from .cpu import blas_threads, parallel_sum, scipy_single_thread, threads_for

BLOCK_BYTES = 1 << 22  # rows of P per block of apply_AtA: about 4 MiB
CG_BLOCK_BYTES = 1 << 23  # the range-space CG's eight work arrays per column block


# ------------------------------------------------------------ A^T-products over row blocks
def apply_At(P, Y):
    """A^T Y = [P^T Y; 1^T Y]   (D+1, s); a tall P (R > D+1) summed over row blocks."""
    xp = get_xp(P, Y)
    R, D = P.shape
    if R > D + 1:
        return parallel_sum(
            xp, R, lambda r0, r1: (prox.apply_At(P[r0:r1], Y[r0:r1]),), macs=P.size * Y.shape[1]
        )[0]
    out = xp.empty((D + 1, Y.shape[1]), dtype=xp.result_type(P, Y))  # no concatenation
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
        return (prox.apply_At(P[r0:r1], apply_A(P[r0:r1], X)),)  # A_r X, still in cache

    return parallel_sum(xp, R, block, max(1, block_rows), macs=2 * P.size * X.shape[1])[0]


def col_gram(P):
    """A^T A = [[P^T P, P^T 1], [1^T P, R]]   (D+1, D+1), summed over row blocks."""
    return parallel_sum(
        get_xp(P),
        P.shape[0],
        lambda r0, r1: (prox.col_gram(P[r0:r1]),),
        macs=P.size * P.shape[1] // 2,  # BLAS syrk
    )[0]


def choose_space(R, D1, out, solver, cg_iters):
    """The cheapest way to apply M, by multiply-add counts (overrides
    :func:`proxnp.prox.choose_space`).

    A Gram matrix X X^T costs half a general product (BLAS syrk).  The matrix-free
    products have only ``out`` columns, which BLAS runs well below its peak, so their
    count is tripled (bench/RESULTS.md has the per-layer timings behind the factor).
    """
    per_solve = out if solver == "exact" else cg_iters * out
    cost = {
        "row_gram": R * R * D1 / 2 + R * R * per_solve,
        "col_gram": R * D1 * D1 / 2 + D1 * D1 * per_solve,
    }
    if solver == "cg":
        cost["matfree"] = 3 * cg_iters * 2 * R * D1 * out
    return min(cost, key=cost.get)


# -------------------------------------------------------------------- range-space CG
BASES = ("auto", "direct", "eigen", "sstep", "sstep_eigen")


def range_space_cg(K, g, inv_tau_theta, iters, tol=None, variant="textbook", basis="auto"):
    """Block CG on M delta = A^T g from delta = 0, run in u with delta = A^T u.

    Iterates, steps, coefficients and residual norms equal those of
    :func:`proxnp.cg.block_cg` on M = A^T A + I/tau_theta; only the arithmetic differs.
    CG on u runs with the operator K + I/tau_theta in the K-inner product
    <x, y>_K = x^T K y = <A^T x, A^T y>, since M A^T = A^T (K + I/tau_theta); it is
    :func:`proxnp.cg.block_cg` itself, on blocks that carry each vector x together with
    K x (:func:`k_inner_cg`), so each iteration costs one product with K (R^2 * out).
    Returns (u, CGInfo); delta = A^T u.

    ``basis="eigen"`` runs the same iteration in the eigenbasis of K = Q diag(lam) Q^T,
    where <x, y>_K = (lam^(1/2) x)^T (lam^(1/2) y): with w = lam^(1/2) Q^T u it is plain
    block CG on diag(lam + 1/tau_theta) w = lam^(1/2) Q^T g, every iteration elementwise,
    after one eigendecomposition and two products with Q.  (Components with lam = 0 do
    not reach delta = A^T u; u gets none.)  ``basis="sstep"`` computes textbook CG's
    u as one s-step block from Chebyshev moments (:func:`sstep_cg`), ``"sstep_eigen"``
    as one in the eigenbasis (:func:`eigen_sstep_cg`); columns they cannot take run the
    loop in float64.  ``"auto"`` picks by cost (:func:`sstep_form`, then
    :func:`use_eigenbasis`).
    """
    xp = get_xp(K, g)
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; expected one of {', '.join(map(repr, BASES))}")
    R, out = g.shape
    if basis == "auto" and xp is np and not (np.isfinite(K).all() and np.isfinite(g).all()):
        basis = "direct"  # a diverged run: NaN/inf flow through the loop to the fit's check
    if basis == "auto":
        basis = sstep_form(R, out, iters, xp, tol, variant) or (
            "eigen" if use_eigenbasis(R, out, iters, xp) else "direct"
        )
    if basis.startswith("sstep") and (
        tol is not None or variant != "textbook" or iters > SSTEP_MAX or xp is not np
    ):
        raise ValueError(
            f"the s-step CG runs textbook CG of at most {SSTEP_MAX} steps without cg_tol, "
            "on NumPy arrays"
        )
    if basis in ("eigen", "sstep_eigen"):
        with scipy_single_thread():
            lam, Q64 = eigh(xp, K.astype(np.float64, copy=False))  # float64: the spectrum drives CG
        Q = Q64.astype(g.dtype, copy=False)
    if basis == "eigen":
        return _eigen_cg(lam, Q, g, inv_tau_theta, iters, tol, variant)
    if basis.startswith("sstep"):
        if basis == "sstep":
            u, info, fallback = sstep_cg(K, g, inv_tau_theta, iters)
        else:
            u, info, fallback = eigen_sstep_cg(lam, Q, g, inv_tau_theta, iters)
        if fallback.size:  # these columns by the loop, in float64
            K64 = K.astype(np.float64, copy=False)
            u_f, info_f = k_inner_cg(
                lambda x, out: np.matmul(K64, x, out=out),
                g[:, fallback].astype(np.float64),
                inv_tau_theta,
                iters,
            )
            u[:, fallback] = u_f
            info.residual_norms[:, fallback] = info_f.residual_norms
        return u, info
    K_g = K.astype(g.dtype, copy=False)
    return k_inner_cg(
        lambda x, out: xp.matmul(K_g, x, out=out), g, inv_tau_theta, iters, tol, variant
    )


def _eigen_cg(lam, Q, g, inv_tau_theta, iters, tol, variant):
    """The loop in the eigenbasis: plain block CG on diag(lam + 1/tau_theta) w = lam^(1/2) Q^T g."""
    xp = get_xp(Q, g)
    root = xp.sqrt(xp.maximum(xp.asarray(lam, dtype=g.dtype), 0))[:, None]
    w, info = _in_column_blocks(
        lambda b: block_cg(
            lambda v: (root * root + inv_tau_theta) * v, b, iters=iters, tol=tol, variant=variant
        ),
        root * (Q.T @ g),
        tol,
    )
    u_hat = xp.where(root > 0, w / xp.where(root > 0, root, 1), 0)
    return Q @ u_hat, info


def k_inner_cg(apply_K, g, inv_tau_theta, iters, tol=None, variant="textbook"):
    """:func:`proxnp.cg.block_cg` on (K + I/tau_theta) u = g in the K-inner product.

    apply_K(x, out) writes K x into ``out``.  Every vector of the loop is an (2R, s)
    block [x; K x]: the recurrences are linear, so the lower half stays K times the
    upper one, and

        operator:  [x; K x]  ->  [y; K y],   y = K x + x/tau_theta   (one product),
        <a, b>_K = a_top^T b_bottom, column by column.

    Returns (u, CGInfo) with u the upper half of the solution block.
    """
    xp = get_xp(g)
    R = g.shape[0]

    def apply_M(v):
        Mv = xp.empty_like(v)
        xp.multiply(v[:R], inv_tau_theta, out=Mv[:R])
        Mv[:R] += v[R:]  # y = K x + x/tau_theta
        apply_K(Mv[:R], Mv[R:])  # K y
        return Mv

    def inner(a, b):  # x^T K y per column
        return xp.einsum("ij,ij->j", a[:R], b[R:])

    B = xp.empty((2 * R, g.shape[1]), dtype=g.dtype)
    B[:R] = g
    apply_K(B[:R], B[R:])
    X, info = block_cg(apply_M, B, iters=iters, tol=tol, variant=variant, inner=inner)
    return X[:R], info


# ------------------------------------------------ s-step CG in a deflated Chebyshev basis
SSTEP_MAX = 10  # the most CG steps taken as one s-step block
SSTEP_COND = 1e8  # a column whose scaled s x s Gram matrix is worse conditioned runs the loop
LANCZOS_STEPS = 12  # for K's top eigenpair and the top of the rest of its spectrum
CHEBYSHEV_MAX = 5  # beyond, the float32 recurrence of sstep_cg rounds to ~1e-5: the eigenbasis
OUTLIER_RATIO = 10  # lam_1 >= this x the next Ritz value: deflate the top eigenpair


def sstep_form(R, out, iters, xp=np, tol=None, variant="textbook"):
    """The cheapest form of textbook CG of ``iters`` steps: ``"sstep"`` (:func:`sstep_cg`),
    ``"sstep_eigen"`` (:func:`eigen_sstep_cg`) or None (the loop).

    A time model in one thread's multiply-adds, fitted to the paper's MLP layers on a
    2-core machine (bench/RESULTS.md), n the threads a product with K gets
    (:func:`proxnp.fast.cpu.threads_for`), a pass over an R x out block counted as
    20 R out, the small s x s algebra as c s^2 out:

        loop:         iters (R^2 out / n + 38 passes)
        sstep:        (iters + 1) R^2 out / n + (6 iters + 20) passes + Lanczos + 4000 s^2 out
        sstep_eigen:  12 R^3 (the eigendecomposition, one thread) + 2 R^2 out / n
                      + (2 iters^2 + 2 iters + 1) R out / n (the moments) + 30 passes
                      + 6400 s^2 out

    The s-step blocks are also the accurate ones (their small systems are float64; the
    loop's recurrences lose up to 1e-2 in float32 on the paper's MLP), so either is taken
    up to twice the loop's time; ``"sstep"`` up to :data:`CHEBYSHEV_MAX` steps (its
    float32 three-term recurrence loses ~1e-6 a step there).  The model leaves out the
    s-step blocks' fixed cost in Python, about 1 ms a call: on small layers (the digits MLP)
    they take longer than the loop and are kept for their accuracy.  Only textbook CG without
    the early exit, on the CPU.
    """
    if xp is not np or tol is not None or variant != "textbook" or iters > SSTEP_MAX:
        return None
    n = threads_for(R * R * out)
    product, passes, small = R * R * out / n, 20 * R * out, iters**2 * out
    cost = {
        None: 2 * iters * (product + 38 * passes),  # the s-step forms up to twice its time
        "sstep": (iters + 1) * product
        + (6 * iters + 20) * passes
        + 8 * LANCZOS_STEPS * R * R
        + 4000 * small,
        "sstep_eigen": 12 * R**3
        + 2 * product
        + (2 * iters**2 + 2 * iters + 1) * R * out / n
        + 30 * passes
        + 6400 * small,
    }
    if iters > CHEBYSHEV_MAX:
        del cost["sstep"]
    return min(cost, key=cost.get)


def top_eigenpair(K):
    """(lam_1, q_1, top): K's largest eigenpair, where it stands apart, and a bound on the
    spectrum left beside it (float64, symmetric positive semi-definite K).

    Lanczos with full re-orthogonalisation, :data:`LANCZOS_STEPS` steps from the start
    vector (1, ..., 2) (not an eigenvector of a K with constant rows).  Inputs >= 0
    (images, ReLU outputs) give K one eigenvalue near R m^T m, m the rows' mean, far above
    the rest; when the top Ritz value is :data:`OUTLIER_RATIO` times the next and its
    residual ||K q_1 - lam_1 q_1|| is below 1e-10 of the next, (lam_1, q_1) is returned
    and ``top`` = 1.05 x the next Ritz value bounds the spectrum of
    K - lam_1 q_1 q_1^T on the complement of q_1.  Otherwise q_1 is None and ``top`` =
    1.05 x the top Ritz value plus its residual bounds all of K's spectrum.
    """
    R = K.shape[0]
    m = min(R, LANCZOS_STEPS)
    Q = np.zeros((R, m))
    alpha, beta = np.zeros(m), np.zeros(m)
    q = np.linspace(1.0, 2.0, R)
    q /= np.linalg.norm(q)
    for k in range(m):
        Q[:, k] = q
        w = K @ q
        alpha[k] = q @ w
        for _ in range(2):  # re-orthogonalise against every Lanczos vector, twice
            w -= Q[:, : k + 1] @ (Q[:, : k + 1].T @ w)
        beta[k] = np.linalg.norm(w)
        if not beta[k] > 1e-14 * np.abs(alpha[: k + 1]).max():  # an invariant subspace
            m = k + 1
            break
        q = w / beta[k]
    T = np.diag(alpha[:m]) + np.diag(beta[: m - 1], 1) + np.diag(beta[: m - 1], -1)
    theta, S = np.linalg.eigh(T)
    q_1 = Q[:, :m] @ S[:, -1]
    residual = np.linalg.norm(K @ q_1 - theta[-1] * q_1)
    if m > 1 and theta[-1] >= OUTLIER_RATIO * theta[-2] and residual <= 1e-10 * theta[-2]:
        return theta[-1], q_1, 1.05 * theta[-2]
    top = 1.05 * theta[-1] + residual
    return theta[-1], None, top if top > 0 else 1.0  # K = 0: any scale


def chebyshev_product(a, b):
    """Chebyshev coefficients of the product of the series sum a_i T_i and sum b_j T_j
    (T_i T_j = (T_{i+j} + T_{abs(i-j)}) / 2)."""
    half = np.multiply.outer(np.asarray(a, float), np.asarray(b, float)).ravel() / 2
    i, j = np.indices((len(a), len(b))).reshape(2, -1)
    n = len(a) + len(b) - 1
    return np.bincount(i + j, half, minlength=n) + np.bincount(abs(i - j), half, minlength=n)


def moment_table(polys, weight, n_moments):
    """T (len(polys), len(polys), n_moments) with sum_m T[a, b, m] nu_m = w^T p_a q_b w
    for Chebyshev series p_a and weight polynomial (all in T_m(L)), nu_m = w^T T_m(L) w."""
    table = np.zeros((len(polys), len(polys), n_moments))
    for a, p in enumerate(polys):
        for b, q in enumerate(polys[: a + 1]):
            c = chebyshev_product(chebyshev_product(p, q), weight)
            table[a, b, : len(c)] = table[b, a, : len(c)] = c
    return table


def galerkin_steps(G, b, B):
    """The small systems of an s-step block, per column, in float64.

    G (n_out, s, s), b (n_out, s): the Galerkin system G y = b in some basis of the Krylov
    space; B (n_out, s + 1, s + 1): the Gram matrix, in the K-inner product, of the
    residual's terms {g, K~ p_0(K) g, ..., K~ p_(s-1)(K) g}, K~ = K + I/tau_theta.  Returns
    (y, norms, fallback): y (n_out, s) solves the full system; ``norms[k]`` =
    sqrt(z^T B z), z = (1, -y_k), with y_k the solution of the leading k x k system (CG's
    ||A^T r_k|| after k steps); ``fallback`` the columns for the loop.

    One Cholesky factor L of the Jacobi-scaled G per column and its inverse, whose
    leading blocks invert the leading blocks.  A column whose scaled G is not positive
    definite, or whose condition number (at most ||G||_F ||L^-1||_F^2) may exceed
    :data:`SSTEP_COND`, falls back; a zero column (G = 0) gets y = 0.
    """
    n_out, s = b.shape
    d = np.sqrt(np.maximum(np.einsum("jaa->ja", G), 0))
    live = d[:, 0] > 0
    d = np.where(d > 0, d, 1)
    Gs, bs = G / d[:, :, None] / d[:, None, :], b / d
    ok = live.copy()
    try:
        L = np.linalg.cholesky(Gs[ok])
    except np.linalg.LinAlgError:  # some columns are not positive definite: leave them out
        ok[ok] = np.linalg.eigvalsh(Gs[ok])[:, 0] > 1 / SSTEP_COND
        try:
            L = np.linalg.cholesky(Gs[ok])
        except np.linalg.LinAlgError:
            ok[:], L = False, np.zeros((0, s, s))
    L_inv = np.linalg.inv(L) if len(L) else L
    bound = np.linalg.norm(Gs[ok], axis=(1, 2)) * np.linalg.norm(L_inv, axis=(1, 2)) ** 2
    keep = bound <= SSTEP_COND  # False for NaN
    ok[ok], L_inv = keep, L_inv[keep]
    z = np.einsum("jab,jb->ja", L_inv, bs[ok])  # L^-1 b
    norms = np.zeros((s + 1, n_out))
    norms[0] = np.sqrt(np.maximum(B[:, 0, 0], 0))
    y = np.zeros((n_out, s))
    for k in range(1, s + 1):  # y_k = L_k^-T (L^-1 b)_k, L_k^-1 the leading block of L^-1
        y_k = np.einsum("jba,jb->ja", L_inv[:, :k, :k], z[:, :k]) / d[ok, :k]
        z_k = np.concatenate([np.ones((len(y_k), 1)), -y_k], axis=1)
        res2 = np.einsum("ja,jab,jb->j", z_k, B[ok, : k + 1, : k + 1], z_k)
        norms[k, ok] = np.sqrt(np.maximum(res2, 0))
    y[ok] = y_k
    return y, norms, np.flatnonzero(live & ~ok)


def sstep_cg(K, g, inv_tau_theta, iters):
    """Textbook block CG of ``iters`` steps from u = 0 in the K-inner product, as one s-step
    block; returns (u, CGInfo, fallback columns).

    After s steps CG's u is the Galerkin solution over the Krylov space
    {p(K) g : deg p < s}: with delta = A^T u it minimises the M-energy
    1/2 delta^T M delta - delta^T A^T g = 1/2 u^T (K^2 + K/tau_theta) u - u^T K g.  So per
    column, for any basis p_0..p_{s-1} of the polynomials of degree < s and
    u = sum_a y_a p_a(K) g,

        G y = b,   G_ab = g^T p_a (K^2 + K/tau_theta) p_b g,   b_a = g^T p_a K g,

    and ||A^T r_k||^2 = g^T r(K) K r(K) g, r(x) = 1 - (x + 1/tau_theta) sum_a y_a p_a(x),
    after k steps (leading k x k systems).  The basis: K = lam_1 q_1 q_1^T + K_perp
    with (lam_1, q_1) K's top eigenpair where it stands apart (:func:`top_eigenpair`;
    else lam_1 = 0), g = alpha q_1 + g_perp, and

        p_0 = 1,   p_a(x) = (1 - x / lam_1) T_{a-1}(L(x))   (deflated),  or  p_a = T_a(L),
        L(x) = 2 x / top - 1,  the spectrum of K_perp in [0, top] mapped to [-1, 1],

    so that p_a(lam_1) = 0 for a >= 1: the outlier drops out of every basis vector but g,
    and every bulk term is a Chebyshev moment nu_m = g_perp^T T_m(L(K_perp)) g_perp, all
    from the vectors w_j = T_j(L) g_perp (``iters + 1`` products with the float32 L,
    w_{j+1} = 2 L w_j - w_{j-1}) by 2 iters + 2 column inner products
    (nu_2j = 2 w_j^T w_j - nu_0, nu_2j+1 = 2 w_j+1^T w_j - nu_1).  The outlier's terms
    are alpha^2 lam_1 (lam_1 + 1/tau_theta) p_a(lam_1) p_b(lam_1) and alpha^2 lam_1 p_a(lam_1).
    The s x s systems, built from the moments by Chebyshev products, are solved in
    float64; u = sum_j c_j w_j + y_0 alpha q_1 is one pass over the w_j.

    Columns that :func:`galerkin_steps` cannot take (a scaled G not positive definite or
    possibly worse conditioned than :data:`SSTEP_COND`) are returned in ``fallback`` (u and
    norms there unset) for the loop to compute.
    """
    xp = get_xp(g)
    s, c = int(iters), inv_tau_theta
    R, n_out = g.shape
    K = K.astype(np.float64, copy=False)
    lam_1, q_1, top = top_eigenpair(K)
    deflate = q_1 is not None
    if not deflate:  # no outlier: lam_1 q_1 q_1^T = 0, g_perp = g
        lam_1, q_1 = 0.0, np.zeros(R)
    L = (2 / top) * (K - lam_1 * np.outer(q_1, q_1))  # K_perp mapped onto [-1, 1]
    L[np.diag_indices(R)] -= 1
    L, two_L = L.astype(g.dtype), (2 * L).astype(g.dtype)
    # w_0..w_{s+1}, each (R, n_out) like g
    W = xp.empty((s + 2, R, n_out), dtype=g.dtype)
    q_g = q_1.astype(g.dtype)
    alpha = q_g @ g
    for r0, r1 in _row_blocks(g):  # g_perp = g - q_1 alpha^T
        np.subtract(g[r0:r1], np.multiply.outer(q_g[r0:r1], alpha), out=W[0, r0:r1])
    alpha2 = alpha.astype(np.float64) ** 2
    np.matmul(L, W[0], out=W[1])
    for j in range(1, s + 1):
        np.matmul(two_L, W[j], out=W[j + 1])
        W[j + 1] -= W[j - 1]
    nu = np.empty((n_out, 2 * s + 2))
    for j in range(s + 1):
        nu[:, 2 * j] = np.einsum("ij,ij->j", W[j], W[j])
        nu[:, 2 * j + 1] = np.einsum("ij,ij->j", W[j + 1], W[j])
    nu[:, 2:] = 2 * nu[:, 2:] - nu[:, [0, 1] * s]
    # the basis and the weights as Chebyshev series in L
    x = np.array([top / 2, top / 2])  # x = top (T_0 + T_1) / 2
    unit = np.eye(s)
    if deflate:
        one_less = np.array([1 - top / (2 * lam_1), -top / (2 * lam_1)])  # 1 - x / lam_1
        basis = [unit[0]] + [chebyshev_product(one_less, unit[a - 1][:a]) for a in range(1, s)]
        at_lam_1 = unit[0]  # p_a(lam_1)
    else:
        basis, at_lam_1 = [unit[a][: a + 1] for a in range(s)], np.zeros(s)
    x_c = x + np.array([c, 0])  # x + 1/tau_theta
    energy = chebyshev_product(x, x_c)  # x^2 + x/tau_theta
    n_m = 2 * s + 2
    G = np.einsum("abm,jm->jab", moment_table(basis, energy, n_m), nu)
    G += np.multiply.outer(alpha2 * lam_1 * (lam_1 + c), np.outer(at_lam_1, at_lam_1))
    b = np.stack([nu[:, : len(px)] @ px for px in (chebyshev_product(p, x) for p in basis)], 1)
    b += np.multiply.outer(alpha2 * lam_1, at_lam_1)
    # the residual's K-norm: r = 1 - sum_a y_a (x + 1/tau_theta) p_a, in the basis
    # {1, (x + 1/tau_theta) p_a}; H is its Gram matrix with weight x
    r_basis = [np.ones(1)] + [chebyshev_product(x_c, p) for p in basis]
    H = np.einsum("abm,jm->jab", moment_table(r_basis, x, n_m), nu)
    r_at = np.concatenate([[1.0], (lam_1 + c) * at_lam_1])
    H += np.multiply.outer(alpha2 * lam_1, np.outer(r_at, r_at))

    y, norms, fallback = galerkin_steps(G, b, H)
    coef = np.zeros((n_out, s))
    for a, p in enumerate(basis):
        coef[:, : len(p)] += y[:, a : a + 1] * p
    coef, q_coef = coef.astype(g.dtype), (y[:, 0] * alpha).astype(g.dtype)
    u = xp.empty_like(g)  # u = sum_j c_j w_j + y_0 alpha q_1, row block by row block
    for r0, r1 in _row_blocks(g):
        u_b = u[r0:r1]
        np.multiply.outer(q_g[r0:r1], q_coef, out=u_b)
        for j in range(s):
            u_b += W[j, r0:r1] * coef[:, j]
    return u, CGInfo(s, norms), fallback


def _row_blocks(g, block_bytes=1 << 18):
    """(r0, r1) over the rows of g in blocks of about 256 KiB, so that an elementwise
    expression over a block runs in the cache."""
    R, n_out = g.shape
    rows = max(1, block_bytes // (g.itemsize * n_out))
    return [(r0, min(R, r0 + rows)) for r0 in range(0, R, rows)]


def krylov_polynomials(x, mu, s):
    """Phi (R, s): phi_0..phi_{s-1} at the points x, orthonormal for the weights mu >= 0.

    sum_i mu_i phi_a(x_i) phi_b(x_i) = [a == b]; phi_a has degree a (Stieltjes'
    procedure with full re-orthogonalisation, float64).  Where the weights have fewer
    than s points, the remaining columns are zero.
    """
    R = x.shape[0]
    Phi = np.zeros((R, s))
    total = mu.sum()
    if not total > 0:
        return Phi
    p = np.full(R, 1 / np.sqrt(total))
    for a in range(s):
        Phi[:, a] = p
        if a + 1 == s:
            break
        q = (x / x.max()) * p  # x scaled to [0, 1]: the same span
        for _ in range(2):  # Gram-Schmidt twice in the mu-inner product
            q -= Phi[:, : a + 1] @ (Phi[:, : a + 1].T @ (mu * q))
        norm = np.sqrt((mu * q * q).sum())
        if not norm > 1e-14:  # the weights live on a + 1 points: the space is exhausted
            break
        p = q / norm
    return Phi


def eigen_sstep_cg(lam, Q, g, inv_tau_theta, iters):
    """:func:`sstep_cg` in the eigenbasis K = Q diag(lam) Q^T: no products with K, and
    every moment from one product; returns (u, CGInfo, fallback columns).

    After s steps CG's u is the Galerkin solution over the Krylov space
    span{g, K~ g, ..., K~^(s-1) g}, K~ = K + I/tau_theta: with u_hat = Q^T u =
    psi(x) g_hat, x = lam + 1/tau_theta, psi = sum_a c_a phi_a of degree < s, it
    minimises the M-energy 1/2 delta^T M delta - delta^T A^T g, delta = A^T u, so per
    column j (weights lam_i g_hat_ij^2, float64)

        G c = b,   G_ab = sum_i lam x phi_a phi_b g_hat^2,   b_a = sum_i lam phi_a g_hat^2,

    and ||A^T r_k||^2 = n0 - 2 c^T h + c^T H c after k steps (leading k x k systems) with
    n0 = sum lam g_hat^2, h_a = sum lam x phi_a g_hat^2, H_ab = sum lam x^2 phi_a phi_b g_hat^2.
    All of these moments are one product of g_hat^2 (out x R) with an R x (2s^2 + 2s + 1)
    table.  The basis phi_a is orthonormal for the columns' mean weights
    (:func:`krylov_polynomials`), so G is well conditioned unless a column's weights
    differ much from the mean; columns that :func:`galerkin_steps` cannot take are
    returned in ``fallback`` (u and norms there unset) for the loop to compute.  The
    record comes from those moments, so a residual norm far below the first one is
    accurate to about 1e-16 ||r_0||^2 / ||r_k|| (the directions to round-off).
    """
    s = int(iters)
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 0)  # K is PSD; clip rounding
    x = lam + inv_tau_theta
    g_hat = (Q.T @ g).astype(np.float64)
    g2 = g_hat * g_hat
    w = lam * x  # the M-energy's weights, per unit g_hat^2
    total = g2.T @ w  # (out,)
    live = total > 0
    mu = g2 @ np.where(live, 1 / np.where(live, total, 1), 0) * w  # mean normalised weights
    Phi = krylov_polynomials(x, mu, s)
    pairs = (Phi[:, :, None] * Phi[:, None, :]).reshape(-1, s * s)
    table = np.concatenate(
        [
            w[:, None] * pairs,  # G
            lam[:, None] * Phi,  # b
            (w * x)[:, None] * pairs,  # H
            w[:, None] * Phi,  # h
            lam[:, None],  # n0
        ],
        axis=1,
    )
    m = g2.T @ table
    n_out = g.shape[1]
    G = m[:, : s * s].reshape(n_out, s, s)
    b = m[:, s * s : s * s + s]
    H = m[:, s * s + s : 2 * s * s + s].reshape(n_out, s, s)
    h = m[:, 2 * s * s + s : 2 * s * s + 2 * s]
    n0 = m[:, -1]
    G = (G + G.transpose(0, 2, 1)) / 2
    B = np.empty((n_out, s + 1, s + 1))  # the residual's terms g, K~ phi_a(K~) g
    B[:, 0, 0], B[:, 0, 1:], B[:, 1:, 0], B[:, 1:, 1:] = n0, h, h, H
    c, norms, fallback = galerkin_steps(G, b, B)
    u_hat = g_hat * (Phi @ c.T)
    u = Q @ u_hat.astype(g.dtype)
    return u, CGInfo(s, norms), fallback


def cg_block_width(xp, R, s, itemsize, tol=None):
    """How many right-hand sides the eigenbasis CG takes at a time.

    The columns are independent, so on the CPU they go in blocks whose work arrays
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


# ------------------------------------------------------------------------- the solvers
def row_gram_float64(P):
    """K = A A^T (R x R) in float64 on the CPU, in P's dtype on a GPU.

    On the CPU from rows centred on their mean m (so 1^T Pc = 0), Pc = P - 1 m^T:

        K = P P^T + 1 1^T = Pc Pc^T + 1 h^T + h 1^T + (m^T m + 1) 1 1^T,   h = Pc m,

    the product Pc Pc^T in P's dtype, the rest in float64.  Inputs >= 0 (images, ReLU
    outputs) give K one eigenvalue near R m^T m, ~1000x the rest on the paper's MLP: a
    float32 P P^T rounds every entry at that eigenvalue's scale, ~1e-4 of the others',
    while Pc Pc^T rounds at the others' own scale.  From float32 P this costs about half
    a float64 product (R^2 D / 2 multiply-adds).
    """
    xp = get_xp(P)
    if xp is not np:
        return row_gram(P)
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged run: inf/NaN go on
        m = P.mean(axis=0, dtype=np.float64)
        P_c = P - m.astype(P.dtype)
        K = (P_c @ P_c.T).astype(np.float64, copy=False)
        h = (P_c @ m.astype(P.dtype)).astype(np.float64, copy=False)
        K += h[:, None]
        K += h[None, :]
        K += m @ m + 1
    return K


def woodbury_inverse(K_damped, dtype=None):
    """(K + I/tau_theta)^{-1} for the row Gram's small SPD matrix (R x R), from its
    Cholesky factor (:func:`proxnp.backend.spd_inverse`), computed in float64 (a float32
    Cholesky of the paper's K loses ~2e-5) and returned in ``dtype`` (default K's).

    Applying it is then a product, which runs on every BLAS thread, where two triangular
    solves with a wide right-hand side would run on one.
    """
    with scipy_single_thread():  # in float64: R^3 / 3 is small beside the products with it
        inverse = spd_inverse(get_xp(K_damped), K_damped.astype("float64", copy=False))
    return inverse.astype(dtype or K_damped.dtype, copy=False)


def woodbury_solve(K_damped, g):
    """(K + I/tau_theta)^{-1} g as one product with :func:`woodbury_inverse`."""
    return woodbury_inverse(K_damped, g.dtype) @ g


def gradient_direction(P, g, inv_tau_theta, space):
    """The explicit step A^T g, over row blocks (:func:`apply_At`)."""
    return apply_At(P, g), None


def exact_direction(P, g, inv_tau_theta, space):
    """:func:`proxnp.prox.exact_direction`: Woodbury by one product, or M's Cholesky."""
    xp = get_xp(P, g)
    R, D1, out = P.shape[0], P.shape[1] + 1, g.shape[1]
    if space == "row_gram":  # Woodbury / push-through
        K_damped = row_gram_float64(P)
        K_damped[xp.diag_indices(R)] += inv_tau_theta
        if D1 < out:  # A^T (K + I/tau_theta)^{-1} first: (D+1) R^2 < R^2 out
            return apply_At(P, woodbury_inverse(K_damped, P.dtype)) @ g, None
        return apply_At(P, woodbury_solve(K_damped, g)), None
    M = col_gram(P)
    M[xp.diag_indices(D1)] += inv_tau_theta
    with scipy_single_thread():
        return spd_solve(xp, M, apply_At(P, g)), None


def cg_direction(P, g, inv_tau_theta, space, cg_iters, cg_backend, cg_variant, cg_tol):
    """:func:`proxnp.prox.cg_direction`; in the row Gram by :func:`range_space_cg`."""
    xp = get_xp(P, g)
    D1, out = P.shape[1] + 1, g.shape[1]
    if space == "row_gram" and (cg_backend == "scipy" or P.shape[0] >= D1):
        space = "col_gram"  # SciPy's cg works on Theta; with R >= D+1, K is singular and larger
    if space == "row_gram":
        K = row_gram_float64(P)  # the eigenbasis is float64; the loop runs in g's dtype
        u, info = range_space_cg(K, g, inv_tau_theta, cg_iters, cg_tol, cg_variant)
        return apply_At(P, u), info
    if space == "col_gram":
        M = col_gram(P)
        M[xp.diag_indices(D1)] += inv_tau_theta

        def apply_M(X):
            return M @ X
    else:  # "matfree"

        def apply_M(X):
            return apply_AtA(P, X) + inv_tau_theta * X

    rhs = apply_At(P, g)  # = grad_Theta J
    product = D1 * D1 * out if space == "col_gram" else 2 * P.shape[0] * D1 * out  # one apply_M
    with blas_threads(xp, product):
        if cg_backend == "scipy":
            return scipy_cg(apply_M, rhs, iters=cg_iters, tol=cg_tol), None
        return block_cg(apply_M, rhs, iters=cg_iters, tol=cg_tol, variant=cg_variant)


SOLVERS = {
    **prox.SOLVERS,
    "exact": prox.SOLVERS["exact"]._replace(solve=exact_direction),
    "cg": prox.SOLVERS["cg"]._replace(solve=cg_direction),
    "gradient": prox.SOLVERS["gradient"]._replace(solve=gradient_direction),
}


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

    The same lookup (:func:`proxnp.prox.solve_with`) in this module's :data:`SOLVERS`;
    ``space="auto"`` takes the cost model :func:`choose_space`; ``"row_gram"`` with CG
    runs the range-space CG.  Returns (d, CGInfo or None).
    """
    xp = get_xp(P, g)
    R, D1, out = P.shape[0], P.shape[1] + 1, g.shape[1]
    with blas_threads(xp, R * D1 * out):  # the size of the weight gradient's product
        return prox.solve_with(
            SOLVERS,
            choose_space,
            P,
            g,
            tau_theta,
            solver,
            space,
            cg_iters=cg_iters,
            cg_backend=cg_backend,
            cg_variant=cg_variant,
            cg_tol=cg_tol,
        )
