"""Proposition 1: Algorithm 1 on the penalty energy equals a gradient step (float64)."""

import numpy as np
import pytest

import proxnp as pn
from proxnp import penalty
from proxnp.gradcheck import numerical_gradient, rel_error

from helpers import batch, mlp, small_convnet

TAUS = [1e-3, 0.1, 1.0, 10.0]


def case(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "convnet":
        return small_convnet(seed=seed), *batch(rng, (3, 3, 8, 8), 3)
    return mlp([7, 6, 5, 4, 3], act=kind, seed=seed), *batch(rng, (11, 7), 3)


def gradient_step(model, loss_fn, x, y, tau):
    pn.backprop(model, loss_fn, x, y)
    return [
        {k: v - tau * phi.grads[k] for k, v in phi.params.items()}
        for phi in penalty.blocks(model).phis
    ]


def max_rel(thetas_a, thetas_b):
    return max(rel_error(ta[k], tb[k]) for ta, tb in zip(thetas_a, thetas_b) for k in ta)


@pytest.mark.parametrize("kind", ["tanh", "sigmoid", "relu", "convnet"])
@pytest.mark.parametrize("tau", TAUS)
def test_algorithm1_equals_gradient_descent(kind, tau):
    model, x, y = case(kind)
    loss_fn = pn.SoftmaxCrossEntropy()
    before = [{k: v.copy() for k, v in t.items()} for t in penalty.current_theta(model)]
    got = penalty.backprop_by_penalty(model, loss_fn, x, y, tau)
    ref = gradient_step(model, loss_fn, x, y, tau)
    # compare the updates, relative to their size
    upd = [{k: got[i][k] - before[i][k] for k in got[i]} for i in range(len(got))]
    upd_ref = [{k: ref[i][k] - before[i][k] for k in ref[i]} for i in range(len(ref))]
    assert max_rel(upd, upd_ref) <= 1e-12 * max(1.0, 1.0 / tau) * 10
    assert max_rel(got, ref) <= 1e-12
    # the model itself is untouched
    assert max_rel(penalty.current_theta(model), before) == 0


@pytest.mark.parametrize("kind", ["tanh", "sigmoid", "convnet"])
@pytest.mark.parametrize("tau", TAUS)
def test_negative_control_breaks_the_equivalence(kind, tau):
    model, x, y = case(kind)
    loss_fn = pn.SoftmaxCrossEntropy()
    before = penalty.current_theta(model)
    got = penalty.backprop_by_penalty(model, loss_fn, x, y, tau, theta_step_at="updated")
    ref = gradient_step(model, loss_fn, x, y, tau)
    upd = [{k: got[i][k] - before[i][k] for k in got[i]} for i in range(len(got))]
    upd_ref = [{k: ref[i][k] - before[i][k] for k in ref[i]} for i in range(len(ref))]
    assert max_rel(upd, upd_ref) > 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tanh", "convnet"])
def test_energy_grads_match_finite_differences(kind, rng):
    model, x, y = case(kind)
    loss_fn = pn.SoftmaxCrossEntropy()
    _, a, z = penalty.forward_point(model, x)
    a = [a_l + 0.3 * rng.standard_normal(a_l.shape) for a_l in a]  # off the forward point
    z = [z_l + 0.3 * rng.standard_normal(z_l.shape) for z_l in z]
    if kind == "convnet":  # keep away from ReLU kinks and max-pool ties
        z = [np.where(np.abs(z_l) < 1e-2, 0.05, z_l) for z_l in z]
    rho, gamma = 0.7, 1.3
    theta = penalty.current_theta(model)
    g = penalty.energy_grads(model, loss_fn, x, y, a, z, rho, gamma)

    def E(**kw):
        return penalty.energy(
            model, loss_fn, x, y, kw.get("a", a), kw.get("z", z), rho, gamma, kw.get("theta", theta)
        ).total

    for l in range(len(a)):
        num = numerical_gradient(lambda v, l=l: E(a=a[:l] + [v] + a[l + 1 :]), a[l], h=1e-5)
        assert rel_error(g["a"][l], num) < 1e-7
        num = numerical_gradient(lambda v, l=l: E(z=z[:l] + [v] + z[l + 1 :]), z[l], h=1e-5)
        assert rel_error(g["z"][l], num) < 1e-7
    for l in range(len(theta)):
        for k in ("W", "b"):

            def f(v, l=l, k=k):
                th = [dict(t) for t in theta]
                th[l][k] = v
                return E(theta=th)

            assert rel_error(g["theta"][l][k], numerical_gradient(f, theta[l][k], h=1e-5)) < 1e-7


@pytest.mark.parametrize("kind", ["relu", "convnet"])
def test_energy_at_forward_point_is_the_loss(kind):
    model, x, y = case(kind)
    loss_fn = pn.SoftmaxCrossEntropy()
    _, a, z = penalty.forward_point(model, x)
    e = penalty.energy(model, loss_fn, x, y, a, z, rho=3.0, gamma=5.0)
    assert e.nonlinear == 0 and e.linear == 0
    assert e.total == loss_fn.forward(model.forward(x), y)


def test_blocks_of_a_convnet():
    model = small_convnet()
    b = penalty.blocks(model)
    assert len(b.phis) == 3 and len(b.sigmas) == 2 and b.head == [] and b.prefix == []
    assert [type(s).__name__ for s in b.sigmas[1]] == ["ReLU", "MaxPool2d", "Flatten"]
    assert "sigma_2: ReLU() -> MaxPool2d(2, stride=2) -> Flatten()" in penalty.describe(model)
    with pytest.raises(ValueError, match="theta_step_at"):
        penalty.backprop_by_penalty(model, pn.SoftmaxCrossEntropy(), None, None, 1.0, "late")
