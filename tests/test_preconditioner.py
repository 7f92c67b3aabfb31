"""ProxProp as a preconditioned gradient (Proposition 2) and its two limits in tau_theta.

For a hidden affine layer with A = [a_prev, 1] (a conv layer: its im2col patch rows) and
Theta = [W; b^T], the exact ProxProp direction is

    d = Theta^k - Theta^{k+1} = (A^T A + I/tau_theta)^{-1} grad_Theta J,

with J the batch *mean* loss and A^T A a batch *sum*.  In terms of the input second
moment C = A^T A / N (K-FAC's "A" factor) this is d = (1/N) (C + I/(N tau_theta))^{-1} grad J.
Everything here is recomputed independently of proxnp.prox: A from the recorded
activations (a naive loop for im2col), grad J from backprop, the solve by numpy.linalg.
"""

import numpy as np
import pytest

import proxnp as pn


def tanh_mlp(sizes, seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(pn.Linear(n_in, n_out, rng=rng, dtype=np.float64))
        if i < len(sizes) - 2:
            layers.append(pn.Tanh())
    return pn.Sequential(*layers)


def data(n, shape, n_classes, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)), rng.integers(0, n_classes, n)


def theta(layer, params):
    """{'W', 'b'} -> Theta = [W_mat; b^T] (D+1, out) for Linear (W: in x out) or Conv2d."""
    W = params["W"]
    W_rows = W.reshape(W.shape[0], -1).T if isinstance(layer, pn.Conv2d) else W
    return np.vstack([W_rows, params["b"][None, :]])


def naive_patch_matrix(x, kh, kw, stride, padding):
    """im2col by loops: one row per (image, out row, out col), columns (c, i, j) like W."""
    N, C, H, W = x.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    rows = []
    for n in range(N):
        for r in range(Ho):
            for c in range(Wo):
                rows.append(
                    xp_[n, :, r * stride : r * stride + kh, c * stride : c * stride + kw].ravel()
                )
    return np.array(rows)


def design_matrix(model, i):
    """A = [P, 1] of parametrised layer i, from the activations of the last forward pass."""
    layer, a_prev = model.layers[i], model.acts[i]
    if isinstance(layer, pn.Conv2d):
        P = naive_patch_matrix(a_prev, *layer.kernel_size, layer.stride, layer.padding)
    else:
        P = a_prev
    return np.hstack([P, np.ones((P.shape[0], 1))])


def backprop_grads(model, x, y):
    pn.backprop(model, pn.SoftmaxCrossEntropy(), x, y)
    return {i: theta(model.layers[i], model.layers[i].grads) for i in model.parametrised()}


def proxprop_dirs(model, x, y, **kw):
    pn.proxprop(model, pn.SoftmaxCrossEntropy(), x, y, **kw)
    return {i: theta(model.layers[i], model.layers[i].grads) for i in model.parametrised()}


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# ------------------------------------------------------------------ tau_theta -> 0
@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_small_tau_theta_gives_backprop_at_rate_tau_theta(solver):
    """d / tau_theta -> grad J with error <= tau_theta * lambda_max(A^T A) (first order)."""
    model = tanh_mlp([10, 16, 12, 4])
    x, y = data(24, (10,), 4)
    grad = backprop_grads(model, x, y)
    hidden = model.parametrised()[:-1]
    lam_max = {
        i: np.linalg.eigvalsh(design_matrix(model, i).T @ design_matrix(model, i)).max()
        for i in hidden
    }
    errs = {}
    for tau_theta in (1e-3, 1e-4):
        d = proxprop_dirs(model, x, y, tau_theta=tau_theta, solver=solver, cg_iters=3)
        for i in hidden:
            errs[i, tau_theta] = rel(d[i] / tau_theta, grad[i])
            # ||(I + t G)^{-1} - I|| = t lam / (1 + t lam) <= t lam_max
            assert errs[i, tau_theta] <= tau_theta * lam_max[i] * (1 + 1e-9), (i, tau_theta)
        last = model.parametrised()[-1]
        assert rel(d[last], grad[last]) < 1e-14  # the last layer: the plain gradient
    for i in hidden:
        ratio = errs[i, 1e-3] / errs[i, 1e-4]
        assert 8.0 < ratio < 12.0, (i, ratio)  # O(tau_theta): ten times smaller


# ------------------------------------------------------------------ Proposition 2
@pytest.mark.parametrize("n", [9, 40], ids=["batch<in+1", "batch>in+1"])
@pytest.mark.parametrize("tau_theta", [0.05, 1.0])
def test_exact_direction_is_preconditioned_gradient_linear(n, tau_theta):
    model = tanh_mlp([14, 20, 11, 3], seed=2)
    x, y = data(n, (14,), 3, seed=3)
    grad = backprop_grads(model, x, y)
    d = proxprop_dirs(model, x, y, tau_theta=tau_theta, solver="exact")
    for i in model.parametrised()[:-1]:
        A = design_matrix(model, i)
        D1 = A.shape[1]
        G = A.T @ A  # batch-sum Gram
        ref = np.linalg.solve(G + np.eye(D1) / tau_theta, grad[i])
        assert rel(d[i], ref) < 1e-10, (i, rel(d[i], ref))
        # the same with the mean second moment C = A^T A / N (K-FAC's input factor):
        # d = (1/N) (C + I / (N tau_theta))^{-1} grad J
        C = G / n
        ref_mean = np.linalg.solve(C + np.eye(D1) / (n * tau_theta), grad[i]) / n
        assert rel(d[i], ref_mean) < 1e-10
        # ... and not the same as a mean data term with the same tau_theta (off by N)
        wrong = np.linalg.solve(C + np.eye(D1) / tau_theta, grad[i])
        assert rel(d[i], wrong) > 1e-2


def test_exact_direction_is_preconditioned_gradient_conv2d():
    rng = np.random.default_rng(4)
    model = pn.Sequential(
        pn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=np.float64),
        pn.Tanh(),
        pn.Conv2d(3, 4, 3, stride=2, padding=1, rng=rng, dtype=np.float64),
        pn.Tanh(),
        pn.Flatten(),
        pn.Linear(4 * 3 * 3, 3, rng=rng, dtype=np.float64),
    )
    x, y = data(3, (2, 6, 6), 3, seed=5)
    grad = backprop_grads(model, x, y)
    tau_theta = 0.3
    d = proxprop_dirs(model, x, y, tau_theta=tau_theta, solver="exact")
    for i in (0, 2):
        A = design_matrix(model, i)
        assert rel(A.T @ _conv_errors(model, x, y)[i], grad[i]) < 1e-12  # grad J = A^T g
        ref = np.linalg.solve(A.T @ A + np.eye(A.shape[1]) / tau_theta, grad[i])
        assert rel(d[i], ref) < 1e-10, (i, rel(d[i], ref))


def _errors_into_layers(model, x, y, kind=pn.Linear):
    """z and g = dJ/dz of every layer of type ``kind`` (layer-by-layer backward pass)."""
    loss_fn = pn.SoftmaxCrossEntropy()
    loss_fn.forward(model.forward(x), y)
    dy, out = loss_fn.backward(), {}
    for i in reversed(range(len(model.layers))):
        if isinstance(model.layers[i], kind):
            out[i] = (model.acts[i + 1].copy(), dy)
        dy = model.layers[i].backward(dy)
    return out


def _conv_errors(model, x, y):
    """g = dJ/dz of every conv layer as rows (n, out row, out col) x channel."""
    return {
        i: dy.transpose(0, 2, 3, 1).reshape(-1, dy.shape[1])
        for i, (_, dy) in _errors_into_layers(model, x, y, pn.Conv2d).items()
    }


# ------------------------------------------------------------------ tau_theta -> infinity
@pytest.mark.parametrize("n", [60, 8], ids=["overdetermined", "underdetermined"])
def test_large_tau_theta_gives_layerwise_least_squares(n):
    """tau_theta -> inf: Theta^{k+1} -> the least-squares fit of z_half = z - g closest to Theta^k."""
    model = tanh_mlp([12, 15, 10, 3], seed=6)
    x, y = data(n, (12,), 3, seed=7)
    zg = _errors_into_layers(model, x, y)
    errs = {}
    for tau_theta in (1e6, 1e8):
        d = proxprop_dirs(model, x, y, tau_theta=tau_theta, solver="exact")
        for i in model.parametrised()[:-1]:
            A = design_matrix(model, i)
            Theta_k = theta(model.layers[i], model.layers[i].params)
            z, g = zg[i]
            z_half = z - g  # eq. (9), tau = 1
            assert np.abs(A @ Theta_k - z).max() < 1e-12
            # least squares for the update: min ||A delta + g||, min-norm  (closest to Theta^k)
            delta_ls = np.linalg.lstsq(A, -g, rcond=None)[0]
            Theta_new = Theta_k - d[i]
            errs[i, tau_theta] = rel(Theta_new - Theta_k, delta_ls)
            if tau_theta < 1e8:
                continue
            if n > A.shape[1]:  # full column rank: the plain least-squares solution of (11)
                Theta_ls = np.linalg.lstsq(A, z_half, rcond=None)[0]
                assert rel(Theta_new, Theta_ls) < 1e-6
            else:  # more unknowns than rows: z_half is fitted exactly
                assert np.abs(A @ Theta_new - z_half).max() < 1e-6 * np.abs(z_half).max()
    for i in model.parametrised()[:-1]:
        assert errs[i, 1e8] < 1e-6, errs
        assert errs[i, 1e8] < 0.02 * errs[i, 1e6], errs  # error O(1/tau_theta)
