"""ProxProp directions: closed forms (Prop. 2), CG, descent (Props. 4-5), limits."""

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


def dense_closed_form(layer, dz, tau_theta):
    """Theta^k - (A^T A + I/tau)^{-1} A^T g with A built explicitly."""
    P, g = prox.affine_problem(layer, dz)
    A = np.hstack([P, np.ones((P.shape[0], 1))])
    M = A.T @ A + np.eye(A.shape[1]) / tau_theta
    return np.linalg.solve(M, A.T @ g), A, g


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
        ("mlp", "row"),
        ("mlp", "gram"),
        ("mlp_tall", "gram"),
        ("mlp_tall", "row"),
        ("convnet", "gram"),
        ("convnet", "row"),
    ],
)
def test_exact_equals_dense_closed_form(kind, space):
    """Proposition 2: theta^k - theta^{k+1} = (A^T A + I/tau_theta)^{-1} grad J, bias included,
    and theta^{k+1} minimises the prox objective (11)."""
    model, x, y = net_and_batch(kind)
    loss_fn = pn.SoftmaxCrossEntropy()
    tau_theta = 0.7
    dz = upstream_errors(model, loss_fn, x, y)
    pn.proxprop(model, loss_fn, x, y, solver="exact", tau_theta=tau_theta, space=space)
    rng = np.random.default_rng(1)
    for i in model.parametrised()[:-1]:
        layer = model.layers[i]
        d_ref, A, g = dense_closed_form(layer, dz[i], tau_theta)
        got = _as_param_layer(layer, layer.grads).theta()
        assert rel_error(got, d_ref) < 1e-12, (i, space)
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
@pytest.mark.parametrize("space", ["row", "gram", "matfree"])
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
            u, info_u = fast_prox.range_space_cg(prox.row_gram(P), g, beta, iters, variant=variant)
            X, info = block_cg(lambda v: M @ v, prox.apply_At(P, g), iters=iters, variant=variant)
            assert rel_error(prox.apply_At(P, u), X) < 1e-10, (iters, variant)
            n = info_u.residual_norms.shape[0]
            assert rel_error(info_u.residual_norms, info.residual_norms[:n]) < 1e-10


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
    assert info_blk.residual_norms.shape == info_one.residual_norms.shape == (4, 10)
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
        d, _ = prox.prox_direction(P, g, 1 / beta, "cg", iters, space="gram")
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


def test_small_tau_theta_limit_is_scaled_gradient():
    model, x, y = net_and_batch("mlp")
    loss_fn = pn.SoftmaxCrossEntropy()
    pn.backprop(model, loss_fn, x, y)
    grad = grads_of(model)
    for tau_theta, tol in [(1e-3, 1e-1), (1e-6, 1e-4), (1e-9, 1e-7)]:
        pn.proxprop(model, loss_fn, x, y, solver="exact", tau_theta=tau_theta)
        err = rel_error(flat(model.layers[0].grads) / tau_theta, flat(grad[0]))
        assert err < tol, (tau_theta, err)


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
        assert err <= 1e-4, (i, err)


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
    with pytest.raises(ValueError, match="unknown CG variant"):
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
            assert fast_prox.choose_space(R, D1, out, solver, iters) == "gram", (R, solver, iters)
    for D1, out in [(3073, 4000), (4001, 1000), (1001, 4000)]:  # the MLP: N = 500 < D + 1
        assert fast_prox.choose_space(500, D1, out, "cg", 3) == "row"
    assert fast_prox.choose_space(10_000, 2001, 4, "cg", 1) == "matfree"  # few outputs


@pytest.mark.parametrize("R,D1,want", [(500, 3073, "row"), (3073, 500, "gram"), (10, 10, "gram")])
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
