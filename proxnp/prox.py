"""The proximal step of one affine layer (eq. 11) -- exact and by conjugate gradient.

For a hidden Linear or Conv2d layer with forward input a_prev^k, output z^k and
backpropagated error g = dJ/dz (batch-mean loss), ProxProp takes::

    theta^{k+1} = argmin_theta 1/2 ||phi(theta, a_prev^k) - z_half||^2
                               + 1/(2 tau_theta) ||theta - theta^k||^2,      (11)
    z_half = z^k - g                                                            (9)

Both layers are affine in theta: phi(theta, a_prev) = A Theta with A = [P, 1]; the
layer gives P (:meth:`design_matrix`), the rows of g (:meth:`error_rows`) and the map
between Theta and its parameters (see :mod:`proxnp.layers`):

* Linear: P = a_prev (N, in), Theta = [W; b^T] (in+1, out);
* Conv2d: P the im2col patch matrix (N*Ho*Wo, C*kh*kw), one row per output pixel,
  Theta = [W_mat^T; b^T] (C*kh*kw+1, F).

So (11) is ridge regression.  With the *update*
delta = Theta^{k+1} - Theta^k (since A Theta^k - z_half = g)::

    M delta = -A^T g,   M = A^T A + I/tau_theta                                (14)

and the direction handed to the optimizer is d = -delta = M^{-1} A^T g = M^{-1} grad J
(Proposition 2, tau = 1).  Solving for delta rather than Theta^{k+1} keeps float32
accurate: Theta^{k+1} = Theta^k + small, and the direct form loses the small part.

Two ways to solve it exactly, with R rows and D+1 columns in A, named for the Gram
matrix they form (``space``):

* ``"row_gram"``, the Gram matrix of A's rows, K = A A^T (R x R; the better one when
  R < D+1, as in the paper's MLP: N = 500 < 3073): by the push-through identity
  M^{-1} A^T = A^T (K + I/tau_theta)^{-1}, a Cholesky of K + I/tau_theta (Woodbury);
* ``"col_gram"``, the Gram matrix of A's columns, A^T A: a Cholesky of M itself
  ((D+1) x (D+1)).

CG (``solver="cg"``) runs block CG (:func:`proxnp.cg.block_cg`, textbook unless
``cg_variant`` says otherwise) on (14) from delta = 0, with M formed (``"col_gram"``)
or applied as A^T (A X) + X/tau_theta (``"matfree"``, and here ``"row_gram"``; the
fast path runs it on K).  The bias column of ones is never materialised:
A x = P x[:-1] + x[-1].

The solvers are one table, :data:`SOLVERS` (name -> solve function, its options and
spaces); :mod:`proxnp.fast.prox` overrides it entry by entry and computes the same
directions faster.  This is the reference path.
"""

from typing import NamedTuple

from .backend import get_xp, spd_solve
from .cg import block_cg, scipy_cg
from .layers import is_parametrised

SPACES = ("auto", "row_gram", "col_gram", "matfree")
CG_BACKENDS = ("proxnp", "scipy")


class AffineProblem(NamedTuple):
    """The ridge problem of one layer: A = [P, 1] and the error rows g."""

    P: object  # (R, D) design matrix without the ones column
    g: object  # (R, out) backpropagated error dJ/dz as rows


def affine_problem(layer, dz):
    """(P, g) of a parametrised layer after its forward pass, for the upstream error dz."""
    if not is_parametrised(layer):
        raise TypeError(f"no proximal step for {layer!r}: it is not affine in its parameters")
    return AffineProblem(layer.design_matrix(), layer.error_rows(dz))


# ------------------------------------------------------------ A, A^T and Gram matrices
def apply_A(P, X):
    """A X = [P, 1] X = P X[:-1] + X[-1]   (R, s)."""
    return P @ X[:-1] + X[-1]


def apply_At(P, Y):
    """A^T Y = [P^T Y; 1^T Y]   (D+1, s)."""
    xp = get_xp(P, Y)
    return xp.concatenate([P.T @ Y, Y.sum(axis=0)[None, :]], axis=0)


def row_gram(P):
    """K = A A^T = P P^T + 1 1^T   (R, R)."""
    return P @ P.T + 1


def col_gram(P):
    """A^T A = [[P^T P, P^T 1], [1^T P, R]]   (D+1, D+1)."""
    xp = get_xp(P)
    colsum = P.sum(axis=0)
    top = xp.concatenate([P.T @ P, colsum[:, None]], axis=1)
    bottom = xp.concatenate([colsum, xp.asarray([P.shape[0]], dtype=P.dtype)])[None, :]
    return xp.concatenate([top, bottom], axis=0)


def choose_space(R, D1, out, solver, cg_iters):
    """The space "auto" means: "row_gram" when K = A A^T (R x R) is the smaller Gram matrix,
    else "col_gram" (A^T A, (D+1) x (D+1)).

    (``out``, ``solver`` and ``cg_iters`` matter to the cost model of
    :func:`proxnp.fast.prox.choose_space`, which the fast path uses.)
    """
    return "row_gram" if R < D1 else "col_gram"


# ------------------------------------------------------------------------- the solvers
def gradient_direction(P, g, inv_tau_theta, space):
    """The explicit step d = A^T g = grad_Theta J (no proximal step)."""
    return apply_At(P, g), None


def exact_direction(P, g, inv_tau_theta, space):
    """d = M^{-1} A^T g by Cholesky: of K + I/tau_theta ("row_gram", push-through) or of M."""
    xp = get_xp(P, g)
    if space == "row_gram":  # Woodbury / push-through
        K_damped = row_gram(P) + inv_tau_theta * xp.eye(P.shape[0], dtype=P.dtype)
        return apply_At(P, spd_solve(xp, K_damped, g)), None
    M = col_gram(P) + inv_tau_theta * xp.eye(P.shape[1] + 1, dtype=P.dtype)  # (14)
    return spd_solve(xp, M, apply_At(P, g)), None


def cg_direction(P, g, inv_tau_theta, space, cg_iters, cg_backend, cg_variant, cg_tol):
    """``cg_iters`` iterations of block CG on (14) from delta = 0 (one column per output)."""
    xp = get_xp(P, g)
    if space == "col_gram":
        M = col_gram(P) + inv_tau_theta * xp.eye(P.shape[1] + 1, dtype=P.dtype)

        def apply_M(X):
            return M @ X
    else:  # "row_gram", "matfree"

        def apply_M(X):
            return apply_At(P, apply_A(P, X)) + inv_tau_theta * X

    rhs = apply_At(P, g)  # = grad_Theta J
    if cg_backend == "scipy":
        return scipy_cg(apply_M, rhs, iters=cg_iters, tol=cg_tol), None
    return block_cg(apply_M, rhs, iters=cg_iters, tol=cg_tol, variant=cg_variant)


class Solver(NamedTuple):
    """One entry of a solver table: how to solve, which options it takes, where it runs."""

    solve: object  # solve(P, g, inv_tau_theta, space, **options) -> (d, CGInfo or None)
    options: tuple  # the keyword options of prox_direction it takes, besides space
    spaces: tuple  # the spaces it can run in ("auto" picks one of them)


CG_OPTIONS = ("cg_iters", "cg_backend", "cg_variant", "cg_tol")
SOLVERS = {
    "exact": Solver(exact_direction, (), ("row_gram", "col_gram")),
    "cg": Solver(cg_direction, CG_OPTIONS, ("row_gram", "col_gram", "matfree")),
    "gradient": Solver(gradient_direction, (), ("row_gram", "col_gram", "matfree")),
}


def check_space(space):
    """ValueError naming the allowed values unless ``space`` is one of :data:`SPACES`."""
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; allowed: {', '.join(SPACES)}")


def check_solver_and_space(solver, space, solvers=SOLVERS):
    """ValueError naming the option unless ``solver`` is in the table and runs in ``space``."""
    if solver not in solvers:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(solvers)}")
    check_space(space)
    if space != "auto" and space not in solvers[solver].spaces:
        allowed = " or ".join(repr(s) for s in solvers[solver].spaces)
        raise ValueError(f"the {solver} solver needs space {allowed}, not {space!r}")


def check_cg_backend(cg_backend):
    """ValueError naming the allowed values unless ``cg_backend`` is one of them."""
    if cg_backend not in CG_BACKENDS:
        raise ValueError(f"unknown cg_backend {cg_backend!r}; allowed: {', '.join(CG_BACKENDS)}")


def solve_with(solvers, choose, P, g, tau_theta, solver, space, **options):
    """Look ``solver`` up in the table ``solvers`` and run it; "auto" resolved by ``choose``.

    The entry's solve gets inv_tau_theta = 1/tau_theta, the space and the options it
    names.  :func:`prox_direction` calls this with :data:`SOLVERS` and
    :func:`choose_space`; the fast path with its own table and cost model.
    """
    check_solver_and_space(solver, space, solvers)
    entry = solvers[solver]
    if space == "auto":
        R, D1 = P.shape[0], P.shape[1] + 1
        space = choose(R, D1, g.shape[1], solver, options.get("cg_iters", 1))
    return entry.solve(P, g, 1.0 / tau_theta, space, **{k: options[k] for k in entry.options})


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
    """The ProxProp direction d = Theta^k - Theta^{k+1} = M^{-1} A^T g (D+1, out).

    P (R, D) and g (R, out) as in :class:`AffineProblem`.  ``solver``: a name in
    :data:`SOLVERS` -- "exact", "cg" (``cg_iters`` iterations of block CG from
    delta = 0, one column per output unit) or "gradient" (d = A^T g, the explicit
    step).  ``space``: see the module docstring; "auto" takes :func:`choose_space`.
    Returns (d, CGInfo or None).
    """
    return solve_with(
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


def prox_objective(P, z_half, Theta, Theta_k, tau_theta):
    """1/2 ||A Theta - z_half||^2 + 1/(2 tau_theta) ||Theta - Theta_k||^2   (eq. 11)."""
    res = apply_A(P, Theta) - z_half
    diff = Theta - Theta_k
    return 0.5 * (res * res).sum() + 0.5 / tau_theta * (diff * diff).sum()
