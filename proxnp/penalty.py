"""Backpropagation as explicit gradient steps on a quadratic penalty energy.

A network is viewed as blocks (:func:`blocks`): each parametrised layer is a linear
transfer phi_l, the parameter-free layers after it (up to the next phi) form sigma_l
-- ReLU, Tanh, Sigmoid, or a chain such as ReLU -> MaxPool2d -> Flatten, so sigma
need not be elementwise -- and the last phi plus anything after it plus the loss
is the L_y term.  With a_0 = X (after any leading parameter-free layers), the
penalty energy of eq. (3) is::

    E(theta, a, z) = L_y(phi(theta_{L-1}, a_{L-2}))
                     + sum_{l=1}^{L-2} gamma/2 ||sigma_l(z_l) - a_l||^2
                                     + rho/2   ||phi(theta_l, a_{l-1}) - z_l||^2 .

**Proposition 1.** With rho = gamma = 1/tau, Algorithm 1 -- one explicit gradient
step of size tau on E for each block of variables, in the order below -- returns
exactly theta - tau * grad J, one step of gradient descent on the training loss::

    forward pass (7): z_l = phi(theta_l, a_{l-1}), a_l = sigma_l(z_l)
    (a)  theta_{L-1}, a_{L-2}: one step from the forward point             (12), (8)
    for l = L-2 .. 1:
    (b)  z_l with the *updated* a_l^{k+1/2}                                 (9)
         a_{l-1} with z_l^{k+1/2} and the *old* theta_l^k                   (10)
    (c)  theta_l with z_l^{k+1/2} and the *forward-pass* a_{l-1}^k          (11, explicit)

**Indices.**  The paper numbers the blocks from 1: phi_l for l = 1 .. L-1, the hidden
blocks (those with a sigma_l and a penalty term) l = 1 .. L-2.  Python lists start at 0,
so the lists here hold block l at list index ``i = l - 1``::

    phis[i] = phi_l      theta[i] = theta_l      sigmas[i] = sigma_l
    z[i]    = z_l        a[i]     = a_l          acts[i]   = a_{l-1}   (acts = [a_0] + a)

In the code ``l`` is always the paper's block index and ``i`` always a list index.

The tests check this to 1e-12 against :func:`proxnp.backprop`, and show that
taking (c) at a_{l-1}^{k+1/2} instead (``theta_step_at="updated"``, the most
likely implementation bug) breaks the equivalence.  Everything here is written
out (no finite differences) and leaves the model untouched.
"""

import copy
from typing import NamedTuple


class Blocks(NamedTuple):
    prefix: list  # parameter-free layers before the first phi (applied to X once)
    phis: list  # phi_1 .. phi_{L-1} (phis[i] = phi_{i+1}): the parametrised layers
    sigmas: list  # sigma_1 .. sigma_{L-2} (sigmas[i] = sigma_{i+1}): parameter-free layers
    head: list  # layers after phi_{L-1}, applied before the loss


class Energy(NamedTuple):
    total: object
    loss: object  # L_y(phi(theta_{L-1}, a_{L-2}))
    nonlinear: object  # sum gamma/2 ||sigma(z_l) - a_l||^2
    linear: object  # sum rho/2 ||phi(theta_l, a_{l-1}) - z_l||^2


def blocks(model):
    """Split a Sequential into the paper's blocks (see the module docstring)."""
    idx = model.parametrised()
    if not idx:
        raise ValueError("the model has no parametrised layer (Linear or Conv2d)")
    layers = model.layers
    sigmas = [layers[i + 1 : j] for i, j in zip(idx[:-1], idx[1:])]
    return Blocks(layers[: idx[0]], [layers[i] for i in idx], sigmas, layers[idx[-1] + 1 :])


def describe(model):
    """A readable listing of the blocks, e.g. for a notebook."""
    b = blocks(model)
    lines = [f"a_0 = {' -> '.join(map(repr, b.prefix)) or 'X'}"]
    for l, (phi, sigma) in enumerate(zip(b.phis, b.sigmas), start=1):
        lines.append(
            f"z_{l} = phi_{l}: {phi!r};   a_{l} = sigma_{l}: "
            f"{' -> '.join(map(repr, sigma)) or 'identity'}"
        )
    lines.append(f"L_y term: {b.phis[-1]!r}" + "".join(f" -> {h!r}" for h in b.head))
    return "\n".join(lines)


# ----------------------------------------------------- running layers without side effects
def _clone(layer, params=None):
    """A shallow copy with its own cache and grads (and optionally other params)."""
    c = copy.copy(layer)
    c.params = dict(layer.params) if params is None else params
    c.grads, c.cache = {}, None
    if hasattr(c, "need_input_grad"):
        c.need_input_grad = True
    return c


def _forward(layers, x):
    clones = [_clone(layer) for layer in layers]
    for c in clones:
        x = c.forward(x)
    return x, clones


def _backward(clones, d):
    for c in reversed(clones):
        d = c.backward(d)
    return d


def current_theta(model):
    """[{'W': ..., 'b': ...}] for phi_1 .. phi_{L-1}, theta[i] = theta_{i+1} (the arrays, not copies)."""
    return [dict(phi.params) for phi in blocks(model).phis]


def forward_point(model, x):
    """The forward pass (7): a_0 and the lists a = [a_1..a_{L-2}], z = [z_1..z_{L-2}] (a[i] = a_{i+1})."""
    b = blocks(model)
    a_prev, _ = _forward(b.prefix, x)
    a0, a, z = a_prev, [], []
    for phi, sigma in zip(b.phis[:-1], b.sigmas):
        z_l, _ = _forward([phi], a_prev)
        a_prev, _ = _forward(sigma, z_l)
        z.append(z_l)
        a.append(a_prev)
    return a0, a, z


# ---------------------------------------------------------------------- the energy
def energy(model, loss_fn, x, y, a, z, rho, gamma, theta=None):
    """E(theta, a, z) of eq. (3) and its three parts, as an :class:`Energy`.

    a, z: lists [a_1..a_{L-2}] and [z_1..z_{L-2}] (list index i holds block l = i + 1);
    theta defaults to the model's.
    """
    b = blocks(model)
    theta = current_theta(model) if theta is None else theta
    a0, _ = _forward(b.prefix, x)
    acts = [a0] + list(a)
    nonlinear = linear = 0.0
    for i in range(len(b.sigmas)):  # block l = i + 1
        phi_out, _ = _forward([_clone(b.phis[i], theta[i])], acts[i])
        r = phi_out - z[i]  # r_l = phi(theta_l, a_{l-1}) - z_l
        linear = linear + rho / 2 * (r * r).sum()
        s, _ = _forward(b.sigmas[i], z[i])
        s = s - a[i]  # s_l = sigma_l(z_l) - a_l
        nonlinear = nonlinear + gamma / 2 * (s * s).sum()
    out, _ = _forward([_clone(b.phis[-1], theta[-1])] + b.head, acts[-1])
    loss = _clone_loss(loss_fn).forward(out, y)
    return Energy(loss + nonlinear + linear, loss, nonlinear, linear)


def _clone_loss(loss_fn):
    c = copy.copy(loss_fn)
    c.cache = None
    return c


def energy_grads(model, loss_fn, x, y, a, z, rho, gamma, theta=None):
    """Partial gradients of E: {'theta': [dict per phi], 'a': [...], 'z': [...]}.

    Written out term by term::

      dE/dtheta_{L-1}, dE/da_{L-2} += backprop of L_y through the head;
      for each hidden block l = 1 .. L-2 (with r_l = phi(theta_l, a_{l-1}) - z_l, s_l = sigma_l(z_l) - a_l):
        dE/dtheta_l  = rho * dphi/dtheta^T r_l,     dE/da_{l-1} += rho * dphi/da^T r_l,
        dE/dz_l      = gamma * dsigma/dz^T s_l - rho * r_l,
        dE/da_l     += -gamma * s_l.

    Each list holds block l at index i = l - 1 (the module docstring's "Indices"); a_0 is
    the input, not a variable, so dE/da_0 is not kept.
    """
    b = blocks(model)
    theta = current_theta(model) if theta is None else theta
    a0, _ = _forward(b.prefix, x)
    acts = [a0] + list(a)
    n_hidden = len(b.sigmas)
    d_theta = [None] * len(b.phis)
    d_a = [0.0 * a_l for a_l in a]
    d_z = [None] * n_hidden
    # the loss term
    out, clones = _forward([_clone(b.phis[-1], theta[-1])] + b.head, acts[-1])
    loss = _clone_loss(loss_fn)
    loss.forward(out, y)
    d_top = _backward(clones, loss.backward())
    d_theta[-1] = clones[0].grads
    if n_hidden:
        d_a[-1] = d_a[-1] + d_top
    # the penalty terms
    for i in range(n_hidden):  # block l = i + 1
        phi_out, phi_clone = _forward([_clone(b.phis[i], theta[i])], acts[i])
        r = phi_out - z[i]  # r_l
        d_in = _backward(phi_clone, rho * r)
        d_theta[i] = phi_clone[0].grads  # dE/dtheta_l
        if i > 0:  # dE/da_{l-1}, which is a[i - 1]
            d_a[i - 1] = d_a[i - 1] + d_in
        s, sigma_clones = _forward(b.sigmas[i], z[i])
        s = s - a[i]  # s_l
        d_z[i] = _backward(sigma_clones, gamma * s) - rho * r  # dE/dz_l
        d_a[i] = d_a[i] - gamma * s  # dE/da_l
    return {"theta": d_theta, "a": d_a, "z": d_z}


# ------------------------------------------------------------------ Algorithm 1
def backprop_by_penalty(model, loss_fn, x, y, tau, theta_step_at="forward"):
    """Algorithm 1 written literally: returns theta^{k+1} as [{'W', 'b'}] per phi.

    Every step is a gradient step of size tau on E with rho = gamma = 1/tau, taken
    at the current values of all variables.  ``theta_step_at="updated"`` is the
    negative control: step (c) at a_{l-1}^{k+1/2} instead of a_{l-1}^k.
    """
    if theta_step_at not in ("forward", "updated"):
        raise ValueError(f"theta_step_at must be 'forward' or 'updated', got {theta_step_at!r}")
    rho = gamma = 1.0 / tau
    theta = [{k: v.copy() for k, v in t.items()} for t in current_theta(model)]
    _, a, z = forward_point(model, x)  # (7)
    n_hidden = len(z)  # L - 2

    def grads_at(a_now, z_now, theta_now):
        return energy_grads(model, loss_fn, x, y, a_now, z_now, rho, gamma, theta_now)

    # (a): theta_{L-1} and a_{L-2}, both from the forward point
    g = grads_at(a, z, theta)
    theta[-1] = {k: v - tau * g["theta"][-1][k] for k, v in theta[-1].items()}  # (12)
    if n_hidden:
        a[-1] = a[-1] - tau * g["a"][-1]  # (8)
    for i in range(n_hidden - 1, -1, -1):  # blocks l = L-2 .. 1, at list index i = l - 1
        # (b): z_l (z[i]) with the updated a_l^{k+1/2} (a[i])
        g = grads_at(a, z, theta)
        z[i] = z[i] - tau * g["z"][i]  # (9)
        # (b) and (c) from one gradient evaluation at z_l^{k+1/2}, theta_l^k, a_{l-1}^k
        if theta_step_at == "updated" and i > 0:
            g_a = grads_at(a, z, theta)
            a[i - 1] = a[i - 1] - tau * g_a["a"][i - 1]  # (10): a_{l-1}
            g = grads_at(a, z, theta)  # the bug: theta_l sees a_{l-1}^{k+1/2}
        else:
            g = grads_at(a, z, theta)
            if i > 0:  # a_{l-1} is a variable unless l = 1 (a_0 = X)
                a[i - 1] = a[i - 1] - tau * g["a"][i - 1]  # (10)
        theta[i] = {k: v - tau * g["theta"][i][k] for k, v in theta[i].items()}  # (c): theta_l
    return theta
