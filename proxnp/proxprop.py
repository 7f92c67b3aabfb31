"""BackProp and ProxProp: fill every layer's ``grads`` with a descent direction.

    loss = backprop(model, loss_fn, x, y)                  # grads = grad J
    loss = proxprop(model, loss_fn, x, y, tau_theta=0.05, solver="cg", cg_iters=3)

``proxprop`` is Algorithm 2 with tau = 1 (the optimizer's learning rate plays tau,
the update is linear in tau: arXiv 1706.04638 §4.2, docs/theory.md):

1. forward pass, storing a_{l-1}^k and z_l^k in every layer's cache        (7)
2. the last parametrised layer takes the plain gradient                     (8), (12)
3. downwards, for each block: the error g = dJ/dz_l arrives through sigma_l
   (z_half = z - g, eq. 9); the layer's grads become theta^k - theta^{k+1} from
   the proximal step (11) at a_{l-1}^k; the signal passed down is the ordinary
   input gradient with theta^k (10).

``solver="gradient"`` replaces (11) by the explicit step, so it reproduces
``backprop`` exactly.  Parameter-free layers just backpropagate.  The proximal step is
:func:`proxnp.fast_prox.prox_direction`, or :func:`proxnp.prox.prox_direction` inside
``with proxnp.reference():``.
"""

import numbers

from . import prox
from .cg import VARIANTS
from .fast import prox as fast_prox
from .fast import use_fast
from .fast.cpu import blas_session
from .prox import CG_BACKENDS, SOLVERS, affine_problem


@blas_session()  # CPU threads: changed once per step, not per product (proxnp.fast.cpu)
def backprop(model, loss_fn, x, y):
    """Forward, loss, backward: every layer's grads = dJ/dtheta.  Returns the loss."""
    out = model.forward(x)
    loss = loss_fn.forward(out, y)
    model.backward(loss_fn.backward())
    return loss


def check_proxprop_options(tau_theta, solver, cg_iters, cg_backend="proxnp", cg_variant="textbook"):
    """Raise ValueError naming the allowed values for any bad option."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(SOLVERS)}")
    if not isinstance(cg_iters, numbers.Integral) or cg_iters < 1:
        raise ValueError(f"cg_iters must be an integer >= 1, got {cg_iters!r}")
    if not isinstance(tau_theta, numbers.Real) or not tau_theta > 0 or tau_theta == float("inf"):
        raise ValueError(f"tau_theta must be a finite number > 0, got {tau_theta!r}")
    if cg_backend not in CG_BACKENDS:
        raise ValueError(f"unknown cg_backend {cg_backend!r}; allowed: {', '.join(CG_BACKENDS)}")
    if cg_variant not in VARIANTS:
        raise ValueError(f"unknown cg_variant {cg_variant!r}; allowed: {', '.join(VARIANTS)}")


@blas_session()
def proxprop(
    model,
    loss_fn,
    x,
    y,
    *,
    tau_theta=1.0,
    solver="cg",
    cg_iters=3,
    cg_backend="proxnp",
    cg_variant="textbook",
    cg_tol=None,
    space="auto",
):
    """ProxProp directions in every layer's grads (Algorithm 2, tau = 1).  Returns the loss.

    Hidden Linear/Conv2d layers: grads = theta^k - theta^{k+1} with theta^{k+1} the
    proximal step (11) -- bias included, batch-sum data term, batch-mean loss.
    The last parametrised layer: the plain gradient.  ``model.cg_info`` maps each
    prox layer's index to its CG record (or None).
    """
    check_proxprop_options(tau_theta, solver, cg_iters, cg_backend, cg_variant)
    out = model.forward(x)
    loss = loss_fn.forward(out, y)
    dy = loss_fn.backward()  # dJ/d(output), tau = 1
    prox_layers = set(model.parametrised()[:-1])  # the last one stays explicit (12)
    model.cg_info = {}
    for i in reversed(range(len(model.layers))):
        layer = model.layers[i]
        if i not in prox_layers:
            dy = layer.backward(dy)  # plain backprop: last layer (12), sigma (9)
            continue
        P, g = affine_problem(layer, dy)  # a_{l-1}^k and g = z - z_half
        solve = fast_prox.prox_direction if use_fast() else prox.prox_direction
        d, model.cg_info[i] = solve(
            P,
            g,
            tau_theta,
            solver,
            cg_iters,
            space=space,
            cg_backend=cg_backend,
            cg_variant=cg_variant,
            cg_tol=cg_tol,
        )
        layer.grads = layer.params_from_theta(d)  # theta^k - theta^{k+1}   (11)
        dy = layer.input_grad(dy) if layer.need_input_grad else None  # (10), old theta^k
    return loss
