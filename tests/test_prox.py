"""ProxProp directions: the exact step minimises (11) in every space, CG, descent (Props. 4-5).

Proposition 2 (the direction is the preconditioned gradient) and the two limits in tau_theta
are tested once, against an independent design matrix and backprop's gradient, in
test_preconditioner.py.
"""

import numpy as np
import pytest

import proxnp as pn
from proxnp import prox
from proxnp.cg import block_cg, scipy_cg
from proxnp.fast import prox as fast_prox
from proxnp.fast.cpu import limit_threads
from proxnp.gradcheck import rel_error

from helpers import batch, mlp, small_convnet


def grads_of(model):
    return {
        i: {k: v.copy() for k, v in model.layers[i].grads.items()} for i in model.parametrised()
    }


def flat(d):
    return np.concatenate([d["W"].ravel(), d["b"].ravel()])


def net_and_batch(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "mlp":
        return mlp([12, 9, 7, 4], seed=seed), *batch(rng, (6, 12), 4)  # N=6 < in+1: row space
    if kind == "mlp_tall":
        return mlp([5, 6, 4, 3], seed=seed), *batch(rng, (20, 5), 3)  # N=20 > in+1: gram
    return small_convnet(seed=seed), *batch(rng, (2, 3, 8, 8), 3)


def design_and_errors(layer, dz):
    """A = [P, 1] built explicitly, and the error rows g."""
    P, g = prox.affine_problem(layer, dz)
    return np.hstack([P, np.ones((P.shape[0], 1))]), g


def upstream_errors(model, loss_fn, x, y):
    """dJ/dz for every parametrised layer (from backprop)."""
    dz = {}
    out = model.forward(x)
    loss_fn.forward(out, y)
    d = loss_fn.backward()
    for i in reversed(range(len(model.layers))):
        if i in model.parametrised():
            dz[i] = d
        d = model.layers[i].backward(d)
    return dz


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_gradient_solver_reproduces_backprop(kind):
    model, x, y = net_and_batch(kind)
    loss_fn = pn.SoftmaxCrossEntropy()
    l1 = pn.backprop(model, loss_fn, x, y)
    ref = grads_of(model)
    l2 = pn.proxprop(model, loss_fn, x, y, solver="gradient")
    assert l1 == l2
    for i, g in grads_of(model).items():
        for k in g:
            assert rel_error(g[k], ref[i][k]) <= 1e-12


@pytest.mark.parametrize(
    "kind,space",
    [
        ("mlp", "row_gram"),
        ("mlp", "col_gram"),
        ("mlp_tall", "col_gram"),
        ("mlp_tall", "row_gram"),
        ("convnet", "col_gram"),
        ("convnet", "row_gram"),
    ],
)
def test_exact_step_minimises_the_prox_objective(kind, space):
    """In every space, theta^{k+1} = theta^k - d minimises the prox objective (11), bias included."""
    model, x, y = net_and_batch(kind)
    loss_fn = pn.SoftmaxCrossEntropy()
    tau_theta = 0.7
    dz = upstream_errors(model, loss_fn, x, y)
    pn.proxprop(model, loss_fn, x, y, solver="exact", tau_theta=tau_theta, space=space)
    rng = np.random.default_rng(1)
    for i in model.parametrised()[:-1]:
        layer = model.layers[i]
        A, g = design_and_errors(layer, dz[i])
        got = _as_param_layer(layer, layer.grads).theta()
        # (11) is a strictly convex quadratic: at its minimiser theta^{k+1} = theta^k - d, a
        # step E raises it by exactly 1/2 ||A E||^2 + 1/(2 tau_theta) ||E||^2
        P = prox.affine_problem(layer, dz[i]).P
        Theta_k = layer.theta()
        Theta = Theta_k - got
        z_half = A @ Theta_k - g  # (9)
        at_min = prox.prox_objective(P, z_half, Theta, Theta_k, tau_theta)
        for scale in (1e-3, 1.0):
            E = scale * rng.standard_normal(Theta.shape)
            rise = prox.prox_objective(P, z_half, Theta + E, Theta_k, tau_theta) - at_min
            want = 0.5 * ((A @ E) ** 2).sum() + 0.5 / tau_theta * (E**2).sum()
            assert rise == pytest.approx(want, rel=1e-6), (i, space, scale)


def _as_param_layer(layer, params):
    """A shallow stand-in with the same type and the given params (for its theta())."""
    clone = object.__new__(type(layer))
    clone.params = params
    return clone


def test_last_layer_gets_the_plain_gradient():
    model, x, y = net_and_batch("mlp")
    loss_fn = pn.SoftmaxCrossEntropy()
    pn.backprop(model, loss_fn, x, y)
    ref = grads_of(model)
    pn.proxprop(model, loss_fn, x, y, solver="exact", tau_theta=0.3)
    last = model.parametrised()[-1]
    assert rel_error(model.layers[last].grads["W"], ref[last]["W"]) == 0
    assert rel_error(model.layers[0].grads["W"], ref[0]["W"]) > 1e-3  # really preconditioned


@pytest.mark.parametrize("kind", ["mlp", "mlp_tall", "convnet"])
@pytest.mark.parametrize("space", ["row_gram", "col_gram", "matfree"])
def test_cg_with_enough_iterations_equals_exact(kind, space):
    model, x, y = net_and_batch(kind)
    loss_fn = pn.SoftmaxCrossEntropy()
    pn.proxprop(model, loss_fn, x, y, solver="exact", tau_theta=0.5)
    exact = grads_of(model)
    n_unknowns = max(model.layers[i].params["W"][0].size + 1 for i in model.parametrised())
    if kind == "convnet":
        n_unknowns = max(model.layers[i].params["W"][0].size + 1 for i in model.parametrised()[:-1])
    pn.proxprop(
        model, loss_fn, x, y, solver="cg", cg_iters=n_unknowns + 5, tau_theta=0.5, space=space
    )
    for i, g in grads_of(model).items():
        assert rel_error(flat(g), flat(exact[i])) < 1e-8, (i, space)


def test_range_space_cg_has_the_same_iterates_as_parameter_space_cg():
    rng = np.random.default_rng(3)
    P, g = rng.standard_normal((8, 30)), rng.standard_normal((8, 5))
    beta = 2.0
    M = prox.col_gram(P) + beta * np.eye(31)
    for iters in range(1, 8):
        for variant in ("textbook", "authors"):
            u, info_u = fast_prox.range_space_cg(
                prox.row_gram(P), g, beta, iters, variant=variant, basis="direct"
            )
            X, info = block_cg(lambda v: M @ v, prox.apply_At(P, g), iters=iters, variant=variant)
            assert rel_error(prox.apply_At(P, u), X) < 1e-10, (iters, variant)
            assert info_u.residual_norms.shape == info.residual_norms.shape
            assert rel_error(info_u.residual_norms, info.residual_norms) < 1e-10


def krylov_galerkin(K, g, inv_tau_theta, s):
    """s steps of CG in exact arithmetic, column by column, independently of any CG loop:
    the Galerkin solution of (K + I/tau_theta) u = g in the K-inner product over the
    Krylov space, on a basis orthonormalised twice (Lanczos with full re-orthogonalisation)
    in the eigenbasis of K."""
    lam, Q = np.linalg.eigh(K)
    lam = np.maximum(lam, 0)
    x, g_hat = lam + inv_tau_theta, Q.T @ g
    u_hat = np.zeros_like(g_hat)
    for j in range(g.shape[1]):
        V = [g_hat[:, j] / np.sqrt((lam * g_hat[:, j] ** 2).sum())]
        for _ in range(1, s):
            q = x * V[-1]
            for _ in range(2):
                for v in V:
                    q = q - (lam * v * q).sum() * v
            V.append(q / np.sqrt((lam * q * q).sum()))
        V = np.stack(V, axis=1)
        c = np.linalg.solve(V.T @ ((lam * x)[:, None] * V), V.T @ (lam * g_hat[:, j]))
        u_hat[:, j] = V @ c
    return Q @ u_hat


def sstep_problem(kind, R=500, D=3072, out=24, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "centred":  # the bench's layer: no outlying eigenvalue
        return rng.standard_normal((R, D)) / 30, rng.standard_normal((R, out)) / R
    if kind == "outlier":  # the paper's MLP: inputs >= 0, K has one eigenvalue 1000x the rest
        return rng.random((R, D)), rng.standard_normal((R, out)) / R
    U, _ = np.linalg.qr(rng.standard_normal((R, R)))  # graded: K's spectrum over 8 decades
    return (U * np.logspace(0, -4, R)) @ rng.standard_normal((R, D)) / 30, rng.standard_normal(
        (R, out)
    )


SSTEP_BASES = ["sstep", "sstep_eigen"]


@pytest.mark.parametrize("basis", SSTEP_BASES)
@pytest.mark.parametrize("s", [1, 2, 3, 5])
def test_sstep_cg_equals_block_cg_in_float64(s, basis):
    """On the paper's shapes (R = 500, D = 3072): the s-step block is within 1e-12 of CG in
    exact arithmetic, and so within block_cg's own rounding (~1e-10 after 5 steps) of it."""
    P, g = sstep_problem("centred")
    K = prox.row_gram(P)
    u, info = fast_prox.range_space_cg(K, g, 20.0, s, basis=basis)
    d, want = prox.apply_At(P, u), prox.apply_At(P, krylov_galerkin(K, g, 20.0, s))
    d_ref, info_ref = prox.prox_direction(P, g, 0.05, "cg", s, space="matfree")
    assert rel_error(d, want) < 1e-12
    assert rel_error(d, d_ref) <= rel_error(d_ref, want) + 1e-12 < 1e-9
    assert info.iterations == s and info.residual_norms.shape == (s + 1, g.shape[1])
    # the record comes from moments: ||r_k|| to about 1e-16 ||r_0||^2 / ||r_k|| (here 1e-5)
    assert rel_error(info.residual_norms, info_ref.residual_norms) < 1e-8


@pytest.mark.parametrize("basis", SSTEP_BASES)
@pytest.mark.parametrize("kind", ["outlier", "graded"])
@pytest.mark.parametrize("s", [1, 2, 3, 5, 10])
def test_sstep_cg_equals_exact_arithmetic_cg_on_ill_conditioned_grams(kind, s, basis):
    """With one eigenvalue far above the rest, textbook CG itself drifts in float64 (by ~1e-6
    after 5 steps, ~1e-3 after 8, on the paper's MLP); the s-step block does not."""
    P, g = sstep_problem(kind, out=8)
    K = prox.row_gram(P)
    u, _ = fast_prox.range_space_cg(K, g, 20.0, s, basis=basis)
    want = prox.apply_At(P, krylov_galerkin(K, g, 20.0, s))
    assert rel_error(prox.apply_At(P, u), want) < 1e-10
    if s <= 3:  # here the CG loop is still exact to round-off
        d_ref, _ = prox.prox_direction(P, g, 0.05, "cg", s, space="matfree")
        assert rel_error(prox.apply_At(P, u), d_ref) < 1e-10


@pytest.mark.parametrize(
    "solver,iters,form",
    [("exact", 1, None)] + [("cg", s, form) for s in (3, 5, 10) for form in SSTEP_BASES],
)
def test_float32_directions_on_the_paper_mlp_spectrum(monkeypatch, solver, iters, form):
    """A first layer of the paper's MLP (batch 500, inputs >= 0: K's top eigenvalue ~1000x
    the rest): float32 within 1e-5 of float64 (exact: 5e-6), where CG's float32
    recurrences lose ~1e-2 -- with either s-step form."""
    P, g = sstep_problem("outlier", out=1000)
    d64, _ = fast_prox.prox_direction(P, g, 0.05, solver, iters)
    monkeypatch.setattr(fast_prox, "sstep_form", lambda *args, **kw: form)
    d32, _ = fast_prox.prox_direction(
        P.astype(np.float32), g.astype(np.float32), 0.05, solver, iters
    )
    assert d32.dtype == np.float32
    err = np.linalg.norm(d32 - d64) / np.linalg.norm(d64)
    assert err <= (5e-6 if solver == "exact" else 1e-5), err


@pytest.mark.parametrize("basis", SSTEP_BASES)
def test_sstep_columns_that_need_the_loop_fall_back_to_it(monkeypatch, basis):
    """A zero column, an eigenvector (its Krylov space ends after one step) and, with the
    condition limit at 1, every column: the loop's directions and records."""
    rng = np.random.default_rng(8)
    P = rng.standard_normal((30, 50))
    K = prox.row_gram(P)
    g = rng.standard_normal((30, 5))
    g[:, 1] = 0
    lam, Q = np.linalg.eigh(K)
    g[:, 2] = Q[:, 7]
    if basis == "sstep":
        _, _, fallback = fast_prox.sstep_cg(K, g, 0.5, 4)
    else:
        _, _, fallback = fast_prox.eigen_sstep_cg(lam, Q, g, 0.5, 4)
    assert list(fallback) == [2]  # the zero column needs nothing, the eigenvector the loop
    u_loop, info_loop = fast_prox.range_space_cg(K, g, 0.5, 4, basis="direct")
    for limit in (fast_prox.SSTEP_COND, 1.0):
        monkeypatch.setattr(fast_prox, "SSTEP_COND", limit)
        u, info = fast_prox.range_space_cg(K, g, 0.5, 4, basis=basis)
        assert np.all(np.isfinite(u)) and np.all(u[:, 1] == 0)
        assert rel_error(prox.apply_At(P, u), prox.apply_At(P, u_loop)) < 1e-10
        assert rel_error(info.residual_norms, info_loop.residual_norms) < 1e-8


def test_a_diverged_layer_gives_nan_directions_not_an_error():
    """inf in the activations (a diverging run) must reach the fit's divergence check."""
    rng = np.random.default_rng(13)
    for where in ("P", "g", "overflow"):
        P, g = rng.standard_normal((6, 20)), rng.standard_normal((6, 4))
        if where == "P":
            P[2, 3] = np.inf
        elif where == "g":
            g[1, 2] = np.nan
        else:
            P[2] = 1e154  # K overflows to inf in float64
        for iters in (3, 10):
            d, _ = fast_prox.prox_direction(P, g, 0.05, "cg", iters)
            assert not np.all(np.isfinite(d)), (where, iters)


def test_sstep_is_chosen_only_for_textbook_cg_without_early_exit_on_the_cpu():
    for out in (4000, 1000):  # the paper's MLP layers
        for iters in (3, 10):
            assert fast_prox.sstep_form(500, out, iters) in ("sstep", "sstep_eigen")
    assert fast_prox.sstep_form(500, 1000, 3) == "sstep"  # eigh(K) dearer than 4 products
    assert fast_prox.sstep_form(500, 1000, fast_prox.CHEBYSHEV_MAX + 1) == "sstep_eigen"
    assert fast_prox.sstep_form(500, 4000, 3, variant="authors") is None
    assert fast_prox.sstep_form(500, 4000, 3, tol=1e-3) is None
    assert fast_prox.sstep_form(500, 4000, 3, xp=object()) is None  # a GPU namespace
    assert fast_prox.sstep_form(500, 4000, fast_prox.SSTEP_MAX + 1) is None
    K, g = np.eye(3), np.ones((3, 2))
    for basis in ("sstep", "sstep_eigen"):
        with pytest.raises(ValueError, match="s-step CG runs textbook CG"):
            fast_prox.range_space_cg(K, g, 0.5, 3, variant="authors", basis=basis)
    with pytest.raises(ValueError, match="unknown basis 'chebyshev'"):
        fast_prox.range_space_cg(K, g, 0.5, 3, basis="chebyshev")


def test_eigenbasis_cg_has_the_same_iterates():
    rng = np.random.default_rng(7)
    P, g = rng.standard_normal((40, 60)), rng.standard_normal((40, 6))
    K = prox.row_gram(P)
    for iters in (1, 2, 3, 6, 10):
        for variant in ("textbook", "authors"):
            u_d, info_d = fast_prox.range_space_cg(
                K, g, 0.5, iters, variant=variant, basis="direct"
            )
            u_e, info_e = fast_prox.range_space_cg(K, g, 0.5, iters, variant=variant, basis="eigen")
            assert rel_error(u_e, u_d) < 1e-8, (iters, variant)
            assert rel_error(info_e.residual_norms, info_d.residual_norms) < 1e-8
    # many iterations are cheaper in the eigenbasis, few directly; never on a GPU
    assert fast_prox.use_eigenbasis(500, 4000, 10) and not fast_prox.use_eigenbasis(500, 4000, 3)
    assert not fast_prox.use_eigenbasis(500, 4000, 1000, xp=object())  # a GPU namespace
    with pytest.raises(ValueError, match="unknown basis"):
        fast_prox.range_space_cg(K, g, 0.5, 3, basis="fourier")


def test_column_blocks_give_the_same_iterates(monkeypatch):
    """The eigenbasis CG runs the columns in cache-sized blocks: the same u and residuals."""
    rng = np.random.default_rng(11)
    P, g = rng.standard_normal((40, 60)), rng.standard_normal((40, 10))
    K = prox.row_gram(P)
    u_one, info_one = fast_prox.range_space_cg(K, g, 0.5, 4, basis="eigen")
    widths = []

    def narrow(xp, R, s, itemsize, tol=None):
        widths.append(3)
        return 3

    monkeypatch.setattr(fast_prox, "cg_block_width", narrow)
    u_blk, info_blk = fast_prox.range_space_cg(K, g, 0.5, 4, basis="eigen")
    assert widths == [3]  # blocks were used
    assert rel_error(u_blk, u_one) < 1e-12
    assert info_blk.iterations == info_one.iterations == 4
    assert info_blk.residual_norms.shape == info_one.residual_norms.shape == (5, 10)
    assert rel_error(info_blk.residual_norms, info_one.residual_norms) < 1e-12


@pytest.mark.parametrize("R,s", [(500, 4000), (500, 10), (50, 4000), (4000, 4000)])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_column_block_width(R, s, itemsize):
    width = fast_prox.cg_block_width(np, R, s, itemsize)
    assert width >= 64  # never tiny blocks
    assert width == 64 or 8 * R * width * itemsize <= fast_prox.CG_BLOCK_BYTES  # work fits
    assert fast_prox.cg_block_width(np, R, s, itemsize, tol=1e-3) == s  # early exit: one block
    assert fast_prox.cg_block_width(object(), R, s, itemsize) == s  # a GPU: one block


def test_scipy_cg_agrees_with_block_cg():
    rng = np.random.default_rng(4)
    P, g = rng.standard_normal((40, 9)), rng.standard_normal((40, 3))
    M = prox.col_gram(P) + 0.5 * np.eye(10)
    rhs = prox.apply_At(P, g)
    for iters in (1, 3, 6):
        X, _ = block_cg(lambda v: M @ v, rhs, iters=iters)
        Xs = scipy_cg(lambda v: M @ v, rhs, iters=iters)
        assert rel_error(X, Xs) < 1e-10
    model, x, y = net_and_batch("mlp")
    loss_fn = pn.SoftmaxCrossEntropy()
    pn.proxprop(model, loss_fn, x, y, cg_iters=2, tau_theta=0.5)
    ours = grads_of(model)
    pn.proxprop(model, loss_fn, x, y, cg_iters=2, tau_theta=0.5, cg_backend="scipy")
    for i, g2 in grads_of(model).items():
        assert rel_error(flat(g2), flat(ours[i])) < 1e-10


def test_cg_error_in_M_norm_decreases_monotonically():
    rng = np.random.default_rng(5)
    P, g = rng.random((30, 20)), rng.standard_normal((30, 4))
    beta = 0.05
    M = prox.col_gram(P) + beta * np.eye(21)
    rhs = prox.apply_At(P, g)
    exact = np.linalg.solve(M, rhs)
    errs = []
    for iters in range(1, 15):
        d, _ = prox.prox_direction(P, g, 1 / beta, "cg", iters, space="col_gram")
        e = d - exact
        errs.append((e * (M @ e)).sum(axis=0))
    errs = np.array(errs)
    assert np.all(np.diff(errs, axis=0) <= 1e-12 * errs[0]), errs
    assert errs[-1].max() < 1e-3 * errs[0].max()


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_directions_are_descent_directions(kind, seed):
    """Propositions 4-5: <d, grad J> > 0 for exact and every CG(1..10), every layer."""
    model, x, y = net_and_batch(kind, seed)
    loss_fn = pn.SoftmaxCrossEntropy()
    pn.backprop(model, loss_fn, x, y)
    grad = grads_of(model)
    for solver, iters in [("exact", 1)] + [("cg", k) for k in range(1, 11)]:
        pn.proxprop(model, loss_fn, x, y, solver=solver, cg_iters=iters, tau_theta=1.0)
        for i, d in grads_of(model).items():
            assert flat(d) @ flat(grad[i]) > 0, (seed, solver, iters, i)


@pytest.mark.slow
@pytest.mark.parametrize("solver,iters", [("exact", 1), ("cg", 3), ("cg", 10)])
def test_float32_matches_float64_on_paper_mlp_shapes(solver, iters):
    rng = np.random.default_rng(0)
    x = rng.random((48, 3072))
    y = rng.integers(0, 10, 48)
    results = {}
    for dtype in (np.float64, np.float32):
        model = mlp([3072, 4000, 1000, 4000, 10], seed=1, dtype=np.float64)
        if dtype == np.float32:
            for layer in model.layers:
                layer.params = {k: v.astype(np.float32) for k, v in layer.params.items()}
        pn.proxprop(
            model,
            pn.SoftmaxCrossEntropy(),
            x.astype(dtype),
            y,
            solver=solver,
            cg_iters=iters,
            tau_theta=0.05,
        )
        results[dtype] = grads_of(model)
    for i in results[np.float64]:
        d64, d32 = flat(results[np.float64][i]), flat(results[np.float32][i])
        assert d32.dtype == np.float32
        err = np.linalg.norm(d32 - d64) / np.linalg.norm(d64)
        assert err <= (5e-6 if solver == "exact" else 1e-5), (i, err)


def test_bad_options_raise():
    model, x, y = net_and_batch("mlp")
    loss_fn = pn.SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="unknown solver 'newton'; allowed: exact, cg, gradient"):
        pn.proxprop(model, loss_fn, x, y, solver="newton")
    with pytest.raises(ValueError, match="cg_iters must be an integer >= 1"):
        pn.proxprop(model, loss_fn, x, y, cg_iters=0)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau_theta must be a finite number > 0"):
            pn.proxprop(model, loss_fn, x, y, tau_theta=bad)
    with pytest.raises(ValueError, match="unknown cg_backend"):
        pn.proxprop(model, loss_fn, x, y, cg_backend="torch")
    with pytest.raises(ValueError, match="unknown space"):
        pn.proxprop(model, loss_fn, x, y, space="fourier")


@pytest.mark.parametrize(
    "solve", [prox.prox_direction, fast_prox.prox_direction], ids=["reference", "fast"]
)
def test_prox_direction_rejects_unknown_names(solve):
    """Called directly (not through proxprop), a misspelt solver or space is an error, not CG."""
    P, g = np.ones((4, 3)), np.ones((4, 2))
    with pytest.raises(ValueError, match="unknown solver 'exactt'"):
        solve(P, g, 0.5, solver="exactt")
    with pytest.raises(ValueError, match="unknown space 'fourier'"):
        solve(P, g, 0.5, solver="exact", space="fourier")


def test_the_fast_table_overrides_every_solver_and_keeps_its_options():
    assert list(fast_prox.SOLVERS) == list(prox.SOLVERS) == ["exact", "cg", "gradient"]
    for name, entry in prox.SOLVERS.items():
        fast = fast_prox.SOLVERS[name]
        assert fast.solve is not entry.solve, name
        assert (fast.options, fast.spaces) == (entry.options, entry.spaces)


def test_solve_with_runs_the_entry_with_its_own_options():
    """A new solver is one table entry: it gets 1/tau_theta, the space and its options only."""
    seen = []

    def scaled(P, g, inv_tau_theta, space, cg_iters):
        seen.append((inv_tau_theta, space, cg_iters))
        return prox.apply_At(P, g) * cg_iters, None

    table = {**prox.SOLVERS, "scaled": prox.Solver(scaled, ("cg_iters",), ("col_gram",))}
    P, g = np.ones((4, 3)), np.ones((4, 2))
    d, _ = prox.solve_with(table, prox.choose_space, P, g, 0.5, "scaled", "auto", cg_iters=3)
    assert seen == [(2.0, "col_gram", 3)] and rel_error(d, 3 * prox.apply_At(P, g)) == 0
    with pytest.raises(ValueError, match="the scaled solver needs space 'col_gram', not 'matfree'"):
        prox.solve_with(table, prox.choose_space, P, g, 0.5, "scaled", "matfree", cg_iters=3)
    with pytest.raises(ValueError, match="unknown solver 'newton'; allowed: exact, cg, gradient"):
        prox.solve_with(prox.SOLVERS, prox.choose_space, P, g, 0.5, "newton", "auto")


def test_one_check_per_option_with_one_wording(capsys):
    """proxprop and the command line reject a bad option with the same sentence."""
    from proxnp.cli import main
    from proxnp.proxprop import check_proxprop_option

    for name, value, flag in [
        ("cg_iters", 0, "--cg-iters"),
        ("cg_iters", 1001, "--cg-iters"),
        ("tau_theta", -1.0, "--tau-theta"),
        ("solver", "newton", "--solver"),
    ]:
        with pytest.raises(ValueError) as e:
            check_proxprop_option(name, value)
        assert main(["train", flag, str(value)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"error: argument {flag}: {e.value}"), (name, err)
    with pytest.raises(ValueError, match="unknown proxprop option 'cg_iter'"):
        check_proxprop_option("cg_iter", 3)
    model, x, y = net_and_batch("mlp")
    with pytest.raises(ValueError, match="the exact solver needs space 'row_gram' or 'col_gram'"):
        pn.proxprop(model, pn.SoftmaxCrossEntropy(), x, y, solver="exact", space="matfree")


def test_block_cg_in_another_inner_product_is_galerkin_in_it():
    """CG with inner = <a, H b> on M = H^-1 S (self-adjoint in H) from 0: after k steps x_k
    minimises (x - x*)^T S (x - x*) over span{b, M b, ..., M^(k-1) b} (checked directly)."""
    rng = np.random.default_rng(12)
    n = 12
    G = rng.standard_normal((n, n))
    H = G @ G.T + n * np.eye(n)
    S = rng.standard_normal((n, n))
    S = S @ S.T + np.eye(n)
    M = np.linalg.solve(H, S)
    b = rng.standard_normal((n, 2))
    x_star = np.linalg.solve(M, b)
    for k in (1, 2, 4):
        X, info = block_cg(
            lambda v: M @ v, b, iters=k, inner=lambda a, c: (a * (H @ c)).sum(axis=0)
        )
        for j in range(2):
            V = np.stack([np.linalg.matrix_power(M, i) @ b[:, j] for i in range(k)], axis=1)
            c = np.linalg.solve(V.T @ S @ V, V.T @ S @ x_star[:, j])
            assert rel_error(X[:, j], V @ c) < 1e-10, (k, j)
        r0 = np.sqrt((b * (H @ b)).sum(axis=0))  # the record is in the H-norm
        assert rel_error(info.residual_norms[0], r0) < 1e-14


def test_block_cg_edge_cases():
    M = np.diag([1.0, 2.0, 3.0])
    B = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # second column: zero rhs
    X0 = np.zeros((3, 2))
    X, info = block_cg(lambda v: M @ v, B, X0=X0, iters=5)
    assert np.all(np.isfinite(X)) and np.all(X0 == 0)
    assert np.allclose(X[:, 0], [1, 0.5, 1 / 3]) and np.all(X[:, 1] == 0)
    assert info.iterations == 5 and info.residual_norms.shape == (6, 2)
    X, info = block_cg(lambda v: M @ v, B, iters=50, tol=1e-8)
    assert info.iterations <= 4
    with pytest.raises(ValueError, match="unknown cg_variant"):
        block_cg(lambda v: M @ v, B, variant="fast")


def test_authors_variant_differs_from_textbook_after_one_iteration():
    rng = np.random.default_rng(6)
    A = rng.standard_normal((10, 10))
    M = A @ A.T + np.eye(10)
    B = rng.standard_normal((10, 2))
    t1, _ = block_cg(lambda v: M @ v, B, iters=1)
    a1, _ = block_cg(lambda v: M @ v, B, iters=1, variant="authors")
    assert rel_error(t1, a1) < 1e-6  # only eps differs
    t3, _ = block_cg(lambda v: M @ v, B, iters=3)
    a3, _ = block_cg(lambda v: M @ v, B, iters=3, variant="authors")
    assert rel_error(t3, a3) > 1e-3


@pytest.mark.parametrize("block_rows", [None, 1, 3, 7, 40])
@pytest.mark.parametrize("threads", [1, 3])
def test_blocked_normal_product_equals_two_passes(block_rows, threads):
    rng = np.random.default_rng(4)
    P, X = rng.standard_normal((29, 6)), rng.standard_normal((7, 3))
    with limit_threads(threads):
        got = fast_prox.apply_AtA(P, X, block_rows)
    A = np.concatenate([P, np.ones((29, 1))], axis=1)  # the ones column, explicit
    assert got.shape == (7, 3)
    assert rel_error(got, A.T @ (A @ X)) < 1e-13


def test_cost_model_for_the_papers_layers():
    convnet_layers = [
        (500 * 32 * 32, 3 * 25 + 1, 16),
        (500 * 16 * 16, 16 * 25 + 1, 20),
        (500 * 8 * 8, 20 * 25 + 1, 20),
    ]
    for R, D1, out in convnet_layers:  # measured: the Gram matrix is cheaper
        for solver, iters in [("cg", 3), ("cg", 10), ("exact", 1)]:
            assert fast_prox.choose_space(R, D1, out, solver, iters) == "col_gram", (
                R,
                solver,
                iters,
            )
    for D1, out in [(3073, 4000), (4001, 1000), (1001, 4000)]:  # the MLP: N = 500 < D + 1
        assert fast_prox.choose_space(500, D1, out, "cg", 3) == "row_gram"
    assert fast_prox.choose_space(10_000, 2001, 4, "cg", 1) == "matfree"  # few outputs


@pytest.mark.parametrize(
    "R,D1,want", [(500, 3073, "row_gram"), (3073, 500, "col_gram"), (10, 10, "col_gram")]
)
def test_reference_space_is_the_smaller_gram_matrix(R, D1, want):
    assert prox.choose_space(R, D1, 4000, "cg", 3) == want


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("R", [11, 3])  # tall: summed over row blocks; wide: not
def test_gram_and_At_summed_over_row_blocks(threads, R):
    rng = np.random.default_rng(5)
    P, Y = rng.standard_normal((R, 4)), rng.standard_normal((R, 2))
    with limit_threads(threads):
        gram, At_Y = fast_prox.col_gram(P), fast_prox.apply_At(P, Y)
    A = np.concatenate([P, np.ones((R, 1))], axis=1)
    assert rel_error(gram, A.T @ A) < 1e-14
    assert rel_error(At_Y, A.T @ Y) < 1e-14
