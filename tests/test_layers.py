"""Every layer's and loss's backward against finite differences (float64), dtypes, errors."""

import contextlib

import numpy as np
import pytest

import proxnp as pn
from proxnp import functional as F
from proxnp.fast import layers as fast_layers
from proxnp.gradcheck import check_layer, directional_check, numerical_gradient, rel_error

from conftest import assert_close, device_name

TOL = 1e-7  # central differences with h = 1e-6 in float64 give ~1e-9 .. 1e-8


LAYER_CASES = {
    "linear": (lambda rng: pn.Linear(7, 5, rng=rng, dtype=np.float64), (4, 7)),
    "conv-stride2-pad1": (
        lambda rng: pn.Conv2d(2, 3, 3, stride=2, padding=1, rng=rng, dtype=np.float64),
        (2, 2, 7, 6),
    ),
    "conv-3x2-pad2": (
        lambda rng: pn.Conv2d(2, 3, (3, 2), stride=1, padding=2, rng=rng, dtype=np.float64),
        (2, 2, 5, 4),
    ),
    "conv-5x5-pad2": (
        lambda rng: pn.Conv2d(1, 2, 5, stride=1, padding=2, rng=rng, dtype=np.float64),
        (2, 1, 6, 7),
    ),
    "relu": (lambda rng: pn.ReLU(), (3, 6)),
    "tanh": (lambda rng: pn.Tanh(), (3, 6)),
    "sigmoid": (lambda rng: pn.Sigmoid(), (3, 6)),
    "maxpool-2x2": (lambda rng: pn.MaxPool2d(2), (2, 3, 6, 4)),
    "maxpool-3x3-overlapping": (lambda rng: pn.MaxPool2d(3, stride=2), (2, 2, 7, 5)),
    "flatten": (lambda rng: pn.Flatten(), (2, 3, 2, 2)),
}


def layer_cases(rng):
    return [(build(rng), shape) for build, shape in LAYER_CASES.values()]


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_backward_matches_finite_differences(case, reference, rng):
    build, shape = LAYER_CASES[case]
    layer = build(rng)
    x = rng.standard_normal(shape)
    if isinstance(layer, pn.ReLU):
        x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    with pn.reference() if reference else contextlib.nullcontext():
        errors = check_layer(layer, x)
    for name, err in errors.items():
        assert err < TOL, f"{layer} d{name}: rel error {err:.2e}"


def test_first_layer_in_sequential_skips_input_gradient(rng):
    model = pn.Sequential(
        pn.Linear(4, 3, rng=rng, dtype=np.float64),
        pn.ReLU(),
        pn.Linear(3, 2, rng=rng, dtype=np.float64),
    )
    out = model.forward(rng.standard_normal((5, 4)))
    assert model.backward(np.ones_like(out)) is None
    assert model.layers[2].need_input_grad


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_conv_matches_direct_loop(rng, reference):
    """im2col convolution equals the definition written as loops."""
    x = rng.standard_normal((2, 3, 6, 5))
    W = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    conv = fast_layers.conv2d_forward if not reference else F.conv2d_forward
    z, _ = conv(x, W, b, stride=2, padding=1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros_like(z)
    for n in range(2):
        for f in range(4):
            for i in range(z.shape[2]):
                for j in range(z.shape[3]):
                    ref[n, f, i, j] = (
                        xp[n, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 2] * W[f]
                    ).sum() + b[f]
    assert rel_error(z, ref) < 1e-14


def test_col2im_is_adjoint_of_im2col(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    cols = F.im2col(x, 3, 3, stride=2, padding=1)
    assert cols.shape == (3 * 9, 2 * 4 * 3)
    c = rng.standard_normal(cols.shape)
    lhs = (cols * c).sum()
    rhs = (x * F.col2im(c, x.shape, 3, 3, stride=2, padding=1)).sum()
    assert abs(lhs - rhs) < 1e-12 * abs(lhs)


def test_maxpool_routes_to_one_argmax(rng):
    x = np.zeros((1, 1, 4, 4))  # all ties: the first window position wins
    pool = pn.MaxPool2d(2)
    pool.forward(x)
    dx = pool.backward(np.ones((1, 1, 2, 2)))
    assert dx.sum() == 4 and dx[0, 0, ::2, ::2].sum() == 4


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_softmax_cross_entropy_gradient(scale, rng):
    logits = rng.standard_normal((5, 4)) * scale
    y = rng.integers(0, 4, 5)
    loss_fn = pn.SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, y)
    assert np.isfinite(loss)
    grad = loss_fn.backward()
    h = 1e-6 if scale == 1 else 1e-3
    num = numerical_gradient(lambda z: pn.SoftmaxCrossEntropy().forward(z, y), logits, h)
    assert rel_error(grad, num) < 1e-6


def test_softmax_cross_entropy_value():
    logits = np.array([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]])
    loss = pn.SoftmaxCrossEntropy().forward(logits, np.array([1, 2]))
    assert np.isclose(loss, (2e4 + np.log(3)) / 2, rtol=1e-12)


def test_mse_gradient(rng):
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss_fn = pn.MeanSquaredError()
    assert np.isclose(loss_fn.forward(pred, target), 0.5 * ((pred - target) ** 2).sum() / 4)
    num = numerical_gradient(lambda p: pn.MeanSquaredError().forward(p, target), pred)
    assert rel_error(loss_fn.backward(), num) < TOL


def test_directional_check_on_big_layer(rng):
    layer = pn.Linear(300, 200, rng=rng, dtype=np.float64)
    x = rng.standard_normal((16, 300))
    dy = rng.standard_normal((16, 200))
    layer.forward(x)
    layer.backward(dy)

    def f(W):
        return (F.affine_forward(x, W, layer.params["b"])[0] * dy).sum()

    assert directional_check(f, layer.params["W"], layer.grads["W"]) < 1e-8
    # and it can fail: a wrong gradient is caught
    assert directional_check(f, layer.params["W"], 1.01 * layer.grads["W"]) > 1e-3


def test_float32_in_float32_out(xp, rng):
    dev = device_name(xp)
    for layer, shape in layer_cases(rng):
        if layer.params:
            layer.params = {k: v.astype(np.float32) for k, v in layer.params.items()}
        layer.to(dev)
        x = xp.asarray(rng.standard_normal(shape).astype(np.float32))
        y = layer.forward(x)
        assert y.dtype == np.float32, layer
        dx = layer.backward(xp.ones_like(y))
        assert dx.dtype == np.float32, layer
        assert all(g.dtype == np.float32 for g in layer.grads.values()), layer
    loss_fn = pn.SoftmaxCrossEntropy()
    logits = xp.asarray(rng.standard_normal((4, 3)).astype(np.float32))
    assert loss_fn.forward(logits, xp.asarray([0, 1, 2, 0])).dtype == np.float32
    assert loss_fn.backward().dtype == np.float32


def test_shape_errors_name_the_layer():
    lin = pn.Linear(64, 32)
    with pytest.raises(
        ValueError, match=r"Linear\(64→32\): expected input \(N, 64\), got \(N, 63\)"
    ):
        lin.forward(np.zeros((5, 63), np.float32))
    with pytest.raises(ValueError, match=r"expected input \(N, 64\), got \(3, 4, 64\)"):
        lin.forward(np.zeros((3, 4, 64), np.float32))
    conv = pn.Conv2d(3, 4, 5)
    with pytest.raises(ValueError, match=r"Conv2d\(3→4.*expected input \(N, 3, N, N\)"):
        conv.forward(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv.forward(np.zeros((2, 3, 4, 4), np.float32))


def test_dtype_errors_never_promote():
    lin = pn.Linear(4, 2)  # float32 by default
    with pytest.raises(ValueError, match="expected input dtype float32, got float64"):
        lin.forward(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="unsupported dtype"):
        pn.Linear(4, 2, dtype=np.int32)


def test_loss_input_errors():
    with pytest.raises(ValueError, match="labels must be integers"):
        pn.SoftmaxCrossEntropy().forward(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"expected labels \(2,\)"):
        pn.SoftmaxCrossEntropy().forward(np.zeros((2, 3)), np.zeros(3, int))
    with pytest.raises(ValueError, match="differ in shape"):
        pn.MeanSquaredError().forward(np.zeros((2, 3)), np.zeros((2, 2)))


def test_init_is_uniform_with_fan_in_bound():
    lin = pn.Linear(400, 300, rng=np.random.default_rng(0), dtype=np.float64)
    W = lin.params["W"]
    assert np.abs(W).max() <= 1 / 20 and np.abs(W).max() > 0.99 / 20
    assert abs(W.mean()) < 1e-3
    conv = pn.Conv2d(3, 16, 5, rng=np.random.default_rng(0))
    assert np.abs(conv.params["W"]).max() <= 1 / np.sqrt(75)


@pytest.mark.gpu
def test_gpu_parity_every_layer(rng):
    import cupy

    for layer, shape in layer_cases(rng):
        if layer.params:
            layer.params = {k: v.astype(np.float32) for k, v in layer.params.items()}
        x = rng.standard_normal(shape).astype(np.float32)
        y_cpu = layer.forward(x)
        dy = rng.standard_normal(y_cpu.shape).astype(np.float32)
        dx_cpu = layer.backward(dy)
        g_cpu = {k: v.copy() for k, v in layer.grads.items()}
        layer.to("gpu")
        y_gpu = layer.forward(cupy.asarray(x))
        dx_gpu = layer.backward(cupy.asarray(dy))
        assert_close(y_gpu, cupy.asarray(y_cpu), rtol=1e-5, atol=1e-5)
        assert_close(dx_gpu, cupy.asarray(dx_cpu), rtol=1e-5, atol=1e-5)
        for k in g_cpu:
            assert_close(layer.grads[k], cupy.asarray(g_cpu[k]), rtol=1e-4, atol=1e-4)
        layer.to("cpu")


@pytest.mark.parametrize("case", ["linear", "conv-stride2-pad1", "conv-3x2-pad2"])
def test_affine_layers_state_their_affine_structure(case, rng):
    """z = A Theta with A = [P, 1]: design matrix, error rows and Theta reproduce the layer,
    and the parameter gradient is A^T g (what the prox step's gradient solver returns)."""
    build, shape = LAYER_CASES[case]
    layer = build(rng)
    x = rng.standard_normal(shape)
    z = layer.forward(x)
    dz = rng.standard_normal(z.shape)
    dx = layer.backward(dz)
    P, Theta = layer.design_matrix(), layer.theta()
    A = np.hstack([P, np.ones((P.shape[0], 1))])
    assert rel_error(A @ Theta, layer.error_rows(z)) < 1e-14
    grads = layer.params_from_theta(A.T @ layer.error_rows(dz))
    for k in layer.params:
        assert grads[k].shape == layer.params[k].shape
        assert rel_error(grads[k], layer.grads[k]) < 1e-13
    assert rel_error(layer.params_from_theta(Theta)["W"], layer.params["W"]) == 0
    assert rel_error(layer.input_grad(dz), dx) < 1e-14
