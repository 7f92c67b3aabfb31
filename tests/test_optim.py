"""Optimizers against update sequences computed by hand."""

import numpy as np
import pytest

import proxnp as pn


def one_param_model(w0, g_seq):
    layer = pn.Linear(1, 1, dtype=np.float64)
    layer.params = {"W": np.array([[w0]]), "b": np.array([0.0])}
    return pn.Sequential(layer), layer


def run(opt_factory, grads, w0=1.0):
    model, layer = one_param_model(w0, grads)
    opt = opt_factory(model)
    ws = []
    for g in grads:
        layer.grads = {"W": np.array([[g]]), "b": np.array([0.0])}
        opt.step()
        ws.append(layer.params["W"][0, 0])
    return ws


def test_plain_sgd():
    assert np.allclose(run(lambda m: pn.optim.SGD(m, lr=0.1), [1.0, 2.0]), [0.9, 0.7])


def test_heavy_ball_momentum():
    # b1 = 1, w = 1 - 0.1*1 = 0.9;  b2 = 0.5*1 + 2 = 2.5, w = 0.9 - 0.25 = 0.65
    assert np.allclose(
        run(lambda m: pn.optim.SGD(m, lr=0.1, momentum=0.5), [1.0, 2.0]), [0.9, 0.65]
    )


def test_nesterov_as_pytorch():
    # b1 = 1, step = 1 + 0.5*1 = 1.5, w = 1 - 0.15 = 0.85
    # b2 = 0.5 + 2 = 2.5, step = 2 + 1.25 = 3.25, w = 0.85 - 0.325 = 0.525
    ws = run(lambda m: pn.optim.SGD(m, lr=0.1, momentum=0.5, nesterov=True), [1.0, 2.0])
    assert np.allclose(ws, [0.85, 0.525])


def test_weight_decay():
    # g = 1 + 0.1*1 = 1.1 -> w = 1 - 0.11
    assert np.allclose(run(lambda m: pn.optim.SGD(m, lr=0.1, weight_decay=0.1), [1.0]), [0.89])


def test_adam():
    # t=1: m = 0.1 g, v = 0.001 g^2; m_hat = g, v_hat = g^2 -> step lr * g/(|g| + eps)
    lr, eps = 0.01, 1e-8
    ws = run(lambda m: pn.optim.Adam(m, lr=lr, eps=eps), [2.0, -1.0])
    w1 = 1 - lr * 2 / (2 + eps)
    m2 = 0.9 * 0.2 + 0.1 * -1.0
    v2 = 0.999 * 0.004 + 0.001 * 1.0
    w2 = w1 - lr * (m2 / (1 - 0.81)) / (np.sqrt(v2 / (1 - 0.999**2)) + eps)
    assert np.allclose(ws, [w1, w2], rtol=1e-12)


def test_state_dict_roundtrip_continues_identically():
    grads = [1.0, -2.0, 0.5, 3.0]
    full = run(lambda m: pn.optim.Adam(m, lr=0.1), grads)
    model, layer = one_param_model(1.0, grads)
    opt = pn.optim.Adam(model, lr=0.1)
    for g in grads[:2]:
        layer.grads = {"W": np.array([[g]]), "b": np.array([0.0])}
        opt.step()
    state = opt.state_dict()
    opt2 = pn.optim.Adam(model, lr=0.1)
    opt2.load_state_dict(state)
    for g in grads[2:]:
        layer.grads = {"W": np.array([[g]]), "b": np.array([0.0])}
        opt2.step()
    assert layer.params["W"][0, 0] == full[-1]


def test_bad_optimizer_arguments():
    model, _ = one_param_model(1.0, [])
    with pytest.raises(ValueError, match="learning rate"):
        pn.optim.SGD(model, lr=0)
    with pytest.raises(ValueError, match="Nesterov"):
        pn.optim.SGD(model, lr=1, nesterov=True)
    with pytest.raises(RuntimeError, match="run backprop"):
        pn.optim.SGD(model, lr=1).step()


def test_axpy_in_place_contiguous_and_strided():
    from proxnp.optim import axpy

    for dtype in (np.float32, np.float64):
        x = np.arange(12, dtype=dtype).reshape(3, 4)
        y = np.ones((3, 4), dtype=dtype)
        out = axpy(0.5, x, y)
        assert out is y and np.array_equal(y, 1 + 0.5 * np.arange(12).reshape(3, 4))
        y2 = np.ones((4, 3), dtype=dtype).T  # not C-contiguous
        axpy(2.0, x, y2)
        assert np.array_equal(y2, 1 + 2 * x)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda m: pn.optim.SGD(m, lr=float("inf")), "learning rate must be a finite number > 0"),
        (lambda m: pn.optim.SGD(m, lr=float("nan")), "learning rate must be a finite number > 0"),
        (lambda m: pn.optim.SGD(m, lr=True), "learning rate must be a finite number > 0"),
        (lambda m: pn.optim.SGD(m, lr="0.1"), "learning rate must be a finite number > 0"),
        (lambda m: pn.optim.SGD(m, lr=1, momentum=float("nan")), r"momentum .* in \[0, 1\)"),
        (lambda m: pn.optim.SGD(m, lr=1, momentum=1.0), r"momentum .* in \[0, 1\), got 1.0"),
        (lambda m: pn.optim.SGD(m, lr=1, momentum=-0.1), r"momentum .* in \[0, 1\)"),
        (lambda m: pn.optim.SGD(m, lr=1, weight_decay=float("inf")), "weight_decay must be"),
        (lambda m: pn.optim.SGD(m, lr=1, momentum=0.9, nesterov="yes"), "nesterov must be"),
        (lambda m: pn.optim.Adam(m, lr=float("inf")), "learning rate must be a finite"),
        (lambda m: pn.optim.Adam(m, betas=(float("nan"), 0.999)), r"betas\[0\] must be"),
        (lambda m: pn.optim.Adam(m, betas=(0.9, 1.0)), r"betas\[1\] must be"),
        (lambda m: pn.optim.Adam(m, betas=0.9), "betas must be a pair"),
        (lambda m: pn.optim.Adam(m, eps=0.0), "eps must be a finite number > 0"),
        (lambda m: pn.optim.Adam(m, eps=float("inf")), "eps must be a finite number > 0"),
    ],
)
def test_hyperparameters_are_checked_in_the_api(make, message):
    """As the command line checks them: finite, in range; an optimizer fed inf/NaN would
    silently turn every weight into NaN."""
    model, _ = one_param_model(1.0, [])
    with pytest.raises(ValueError, match=message):
        make(model)


def test_valid_hyperparameters_at_the_ends_of_their_ranges_are_accepted():
    model, _ = one_param_model(1.0, [])
    pn.optim.SGD(model, lr=1e-300, momentum=0.0)
    pn.optim.SGD(model, lr=1, momentum=0.999999, nesterov=True, weight_decay=0.0)
    pn.optim.Adam(model, lr=1e300, betas=(0.0, 0.0), eps=1e-300)
