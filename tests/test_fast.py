"""The fast kernels against the reference path: the same numbers, kernel by kernel.

float64 to ~1e-10 relative, float32 within float32 rounding, on awkward shapes (stride,
padding, odd sizes, overlapping pools, N < D and N > D, several CG iteration counts),
on NumPy and (``gpu`` marker) on CuPy.
"""

import numpy as np
import pytest

import proxnp as pn
from proxnp import fast, prox
from proxnp import functional as F
from proxnp.fast import layers as fast_layers
from proxnp.fast import prox as fast_prox
from proxnp.gradcheck import rel_error

from conftest import device_name
from helpers import batch, mlp, small_convnet

TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-5}

CONV_CASES = [
    pytest.param((2, 3, 7, 6), (4, 3, 3, 3), 1, 1, id="3x3-pad1"),
    pytest.param((3, 2, 9, 8), (5, 2, 3, 3), 2, 0, id="3x3-stride2"),
    pytest.param((2, 3, 7, 5), (4, 3, 3, 2), 2, 2, id="3x2-stride2-pad2"),
    pytest.param((1, 1, 5, 5), (2, 1, 5, 5), 1, 2, id="5x5-pad2-one-image"),
    pytest.param((5, 4, 6, 7), (3, 4, 1, 1), 1, 0, id="1x1"),
]
POOL_CASES = [
    pytest.param((2, 3, 8, 6), 2, None, id="2x2"),
    pytest.param((3, 2, 7, 9), 3, 2, id="3x3-stride2-overlapping"),
    pytest.param((2, 2, 7, 7), 2, None, id="2x2-odd-size"),
    pytest.param((1, 3, 6, 6), 3, 1, id="3x3-stride1"),
]


def as_xp(xp, a, dtype):
    return xp.asarray(np.asarray(a, dtype=dtype))


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CONV_CASES)
def test_convolution_kernels_equal_the_reference(xp, dtype, rng, x_shape, w_shape, stride, padding):
    x = as_xp(xp, rng.standard_normal(x_shape), dtype)
    W = as_xp(xp, rng.standard_normal(w_shape), dtype)
    b = as_xp(xp, rng.standard_normal(w_shape[0]), dtype)
    z_ref, cache_ref = F.conv2d_forward(x, W, b, stride, padding)
    z, cache = fast_layers.conv2d_forward(x, W, b, stride, padding)
    assert type(cache) is type(cache_ref) and z.dtype == z_ref.dtype == dtype
    dz = as_xp(xp, rng.standard_normal(z.shape), dtype)
    pairs = [(z, z_ref), (cache.patches_T, cache_ref.patches_T)]
    pairs += list(zip(fast_layers.conv2d_backward(dz, cache), F.conv2d_backward(dz, cache_ref)))
    pairs.append((fast_layers.conv2d_input_grad(dz, cache), F.conv2d_input_grad(dz, cache_ref)))
    _, dW, db = fast_layers.conv2d_backward(dz, cache, need_dx=False)
    pairs += [(dW, pairs[3][1]), (db, pairs[4][1])]
    for got, want in pairs:
        assert got.shape == want.shape and got.dtype == want.dtype
        assert rel_error(got, want) < TOL[dtype]


@pytest.mark.parametrize("x_shape,kernel,stride", POOL_CASES)
def test_pooling_kernels_equal_the_reference(xp, dtype, rng, x_shape, kernel, stride):
    x = rng.standard_normal(x_shape)
    x[0, 0, :2, :2] = 1.0  # a tie: both take its first position
    x = as_xp(xp, x, dtype)
    out_ref, cache_ref = F.max_pool2d_forward(x, kernel, stride)
    out, cache = fast_layers.max_pool2d_forward(x, kernel, stride)
    assert type(cache) is type(cache_ref)
    assert rel_error(out, out_ref) == 0
    assert bool((cache.argmax == cache_ref.argmax).all())
    dout = as_xp(xp, rng.standard_normal(out.shape), dtype)
    dx, dx_ref = (
        fast_layers.max_pool2d_backward(dout, cache),
        F.max_pool2d_backward(dout, cache_ref),
    )
    assert dx.shape == dx_ref.shape == x.shape and dx.dtype == dtype
    assert rel_error(dx, dx_ref) < TOL[dtype]


# ------------------------------------------------------------------------ the prox step
PROX_CASES = [  # (R, D, out): N < D + 1 and N > D + 1
    pytest.param(7, 12, 4, id="wide-N<D"),
    pytest.param(40, 9, 3, id="tall-N>D"),
    pytest.param(10, 9, 5, id="square-N=D+1"),
    pytest.param(5, 8, 12, id="wide-N<D<out"),  # the exact row space multiplies A^T K^-1 first
]
SOLVES = [
    pytest.param("exact", 1, space, id=f"exact-{space}")
    for space in ("auto", "row_gram", "col_gram")
]
SOLVES += [
    pytest.param("cg", k, space, id=f"cg{k}-{space}")
    for k in (1, 3, 10)
    for space in ("auto", "row_gram", "col_gram", "matfree")
]
SOLVES += [pytest.param("gradient", 1, "auto", id="gradient")]


@pytest.mark.parametrize("R,D,out", PROX_CASES)
@pytest.mark.parametrize("solver,iters,space", SOLVES)
def test_prox_direction_equals_the_reference(xp, dtype, R, D, out, solver, iters, space):
    rng = np.random.default_rng(R * 100 + D)
    P = as_xp(xp, rng.standard_normal((R, D)), dtype)
    g = as_xp(xp, rng.standard_normal((R, out)) / R, dtype)
    d_ref, info_ref = prox.prox_direction(P, g, 0.5, solver, iters, space=space)
    d, info = fast_prox.prox_direction(P, g, 0.5, solver, iters, space=space)
    assert d.shape == (D + 1, out) and d.dtype == d_ref.dtype == dtype
    tol = TOL[dtype] * (10 if iters == 10 else 1)  # float32: ten iterations accumulate rounding
    assert rel_error(d, d_ref) < tol
    assert (info is None) == (info_ref is None)
    if info is not None:
        assert info.iterations == info_ref.iterations == iters
        assert info.residual_norms.shape == info_ref.residual_norms.shape == (iters + 1, out)
        assert rel_error(info.residual_norms, info_ref.residual_norms) < tol


@pytest.mark.parametrize(
    "options",
    [dict(cg_variant="authors"), dict(cg_backend="scipy"), dict(cg_tol=1e-4, cg_iters=30)],
    ids=["authors-variant", "scipy-cg", "early-exit"],
)
def test_cg_options_equal_the_reference(options):
    rng = np.random.default_rng(3)
    P, g = rng.standard_normal((9, 20)), rng.standard_normal((9, 4))
    kw = dict(dict(solver="cg", cg_iters=4), **options)
    d_ref, _ = prox.prox_direction(P, g, 0.5, **kw)
    d, _ = fast_prox.prox_direction(P, g, 0.5, **kw)
    assert rel_error(d, d_ref) < 1e-10


def test_the_fast_gram_and_At_products_equal_the_reference(rng):
    P, Y, X = (
        rng.standard_normal((53, 6)),
        rng.standard_normal((53, 3)),
        rng.standard_normal((7, 3)),
    )
    assert rel_error(fast_prox.col_gram(P), prox.col_gram(P)) < 1e-14
    assert rel_error(fast_prox.apply_At(P, Y), prox.apply_At(P, Y)) < 1e-14
    assert rel_error(fast_prox.apply_AtA(P, X), prox.apply_At(P, prox.apply_A(P, X))) < 1e-14


# --------------------------------------------------------------- the switch, end to end
def directions(model, x, y, **options):
    pn.proxprop(model, pn.SoftmaxCrossEntropy(), x, y, **options)
    return [
        {k: pn.to_numpy(v).copy() for k, v in model.layers[i].grads.items()}
        for i in model.parametrised()
    ]


# Whole networks: exact and a few CG iterations.  (Many iterations on a small conv layer
# are sensitive to the last bit of the Gram matrix: two sums of the same rows in another
# order give iterates 1e-5 apart after ten.  The kernel test above covers ten iterations.)
@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize("solver,iters", [("exact", 1), ("cg", 1), ("cg", 3)])
def test_proxprop_under_reference_equals_the_fast_path(xp, kind, solver, iters):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        model, (x, y) = mlp([20, 30, 25, 5]), batch(rng, (10, 20), 5)
    else:
        model, (x, y) = small_convnet(), batch(rng, (4, 3, 8, 8), 3)
    model.to(device_name(xp))
    x, y = xp.asarray(x), xp.asarray(y)
    fast = directions(model, x, y, solver=solver, cg_iters=iters, tau_theta=0.5)
    with pn.reference():
        ref = directions(model, x, y, solver=solver, cg_iters=iters, tau_theta=0.5)
    for f, r in zip(fast, ref):
        for k in f:
            assert rel_error(f[k], r[k]) < 1e-10, (kind, solver, iters, k)


def test_reference_runs_the_reference_code(monkeypatch):
    calls = []
    for name in (
        "conv2d_forward",
        "conv2d_backward",
        "conv2d_input_grad",
        "max_pool2d_forward",
        "max_pool2d_backward",
    ):
        real = getattr(F, name)
        monkeypatch.setattr(
            F, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    real_prox = prox.prox_direction
    monkeypatch.setattr(
        prox, "prox_direction", lambda *a, **k: calls.append("prox_direction") or real_prox(*a, **k)
    )
    model, (x, y) = small_convnet(), batch(np.random.default_rng(1), (2, 3, 8, 8), 3)
    loss_fn = pn.SoftmaxCrossEntropy()
    directions(model, x, y, solver="cg")
    pn.backprop(model, loss_fn, x, y)
    assert calls == []  # outside: the fast kernels
    with pn.reference():
        directions(model, x, y, solver="cg")
        pn.backprop(model, loss_fn, x, y)
    assert {
        "conv2d_forward",
        "conv2d_backward",
        "conv2d_input_grad",
        "max_pool2d_forward",
        "max_pool2d_backward",
        "prox_direction",
    } <= set(calls)


def test_reference_nests_and_restores_the_fast_path():
    assert fast.use_fast()
    with pn.reference():
        assert not fast.use_fast()
        with pn.reference():
            assert not fast.use_fast()
        assert not fast.use_fast()
    assert fast.use_fast()
    with pytest.raises(RuntimeError), pn.reference():
        raise RuntimeError("inside")
    assert fast.use_fast()


def test_woodbury_solve_equals_a_solve(xp, dtype, rng):
    P = rng.standard_normal((40, 90))
    K_beta = as_xp(xp, P @ P.T + 1 + 2.0 * np.eye(40), dtype)
    g = as_xp(xp, rng.standard_normal((40, 7)), dtype)
    u = fast_prox.woodbury_solve(K_beta, g)
    assert u.dtype == dtype
    want = np.linalg.solve(
        pn.to_numpy(K_beta).astype(np.float64), pn.to_numpy(g).astype(np.float64)
    )
    assert rel_error(u, want) < (1e-12 if dtype == np.float64 else 1e-4)


def test_woodbury_inverse_names_a_matrix_that_is_not_positive_definite():
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        fast_prox.woodbury_solve(-np.eye(3), np.ones((3, 2)))
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        fast_prox.prox_direction(np.zeros((2, 3)), np.ones((2, 5)), -1.0, "exact", space="row_gram")
