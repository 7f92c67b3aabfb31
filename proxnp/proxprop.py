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
:func:`proxnp.fast.prox.prox_direction`, or :func:`proxnp.prox.prox_direction` inside
``with proxnp.reference():``.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import prox
from .backend import Array
from .cg import check_cg_options
from .fast import prox as fast_prox
from .fast import use_fast
from .fast.cpu import blas_session
from .losses import Loss
from .model import Sequential
from .prox import affine_problem, check_cg_backend, check_solver_and_space, check_space

MAX_CG_ITERS = 1000  # a few CG steps is the point of ProxProp; more than this never helps


@blas_session()  # CPU threads: changed once per step, not per product (proxnp.fast.cpu)
def backprop(model: Sequential, loss_fn: Loss, x: Array, y: Array) -> Array:
    """Forward, loss, backward: every layer's grads = dJ/dtheta.  Returns the loss."""
    out = model.forward(x)
    loss = loss_fn.forward(out, y)
    model.backward(loss_fn.backward())
    return loss


def check_proxprop_option(name, value):
    """Raise ValueError naming the option and what is allowed, unless ``value`` is allowed.

    The one check of every proxprop option (the command line and the fit loop call it):
    names are looked up in the solver table and the CG's own checks.
    """
    if name == "tau_theta":
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not 0 < value < float("inf")
        ):
            raise ValueError(f"tau_theta must be a finite number > 0, got {value!r}")
    elif name == "solver":
        check_solver_and_space(value, "auto")
    elif name == "space":
        check_space(value)
    elif name == "cg_iters":
        check_cg_options(value)
        if value > MAX_CG_ITERS:
            raise ValueError(f"cg_iters must be an integer in [1, {MAX_CG_ITERS}], got {value!r}")
    elif name == "cg_backend":
        check_cg_backend(value)
    elif name == "cg_variant":
        check_cg_options(1, variant=value)
    elif name == "cg_tol":
        check_cg_options(1, tol=value)
    else:
        raise ValueError(f"unknown proxprop option {name!r}")


def check_proxprop_options(
    tau_theta,
    solver,
    cg_iters,
    cg_backend="proxnp",
    cg_variant="textbook",
    cg_tol=None,
    space="auto",
    dtype=None,
):
    """Raise ValueError naming the allowed values for any bad option (or combination).

    With ``dtype`` (the model's), tau_theta must also be large enough for it
    (:func:`check_tau_theta`).
    """
    for name, value in (
        ("tau_theta", tau_theta),
        ("solver", solver),
        ("cg_iters", cg_iters),
        ("cg_backend", cg_backend),
        ("cg_variant", cg_variant),
        ("cg_tol", cg_tol),
        ("space", space),
    ):
        check_proxprop_option(name, value)
    check_solver_and_space(solver, space)  # e.g. the exact solver never runs matrix-free
    if dtype is not None:
        _check_inverse_fits(tau_theta, dtype)


def check_tau_theta(tau_theta, dtype):
    """Raise ValueError unless tau_theta > 0 is finite and 1/tau_theta is finite in ``dtype``.

    The proximal step (11) adds I/tau_theta to A^T A: in float32 a tau_theta below about
    3e-39 makes 1/tau_theta overflow to inf (and the step NaN), which is a bad setting,
    not a diverged run.
    """
    check_proxprop_option("tau_theta", tau_theta)
    _check_inverse_fits(tau_theta, dtype)


def _check_inverse_fits(tau_theta, dtype):
    """1/tau_theta (tau_theta already checked > 0 and finite) must be finite in ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and not 1.0 / float(tau_theta) <= float(np.finfo(dtype).max):
        raise ValueError(
            f"tau_theta = {tau_theta:g} is too small for {dtype.name}: 1/tau_theta = "
            f"{1.0 / float(tau_theta):g} exceeds its largest number {np.finfo(dtype).max:g}"
        )


@blas_session()
def proxprop(
    model: Sequential,
    loss_fn: Loss,
    x: Array,
    y: Array,
    *,
    tau_theta: float = 1.0,
    solver: str = "cg",
    cg_iters: int = 3,
    cg_backend: str = "proxnp",
    cg_variant: str = "textbook",
    cg_tol: float | None = None,
    space: str = "auto",
) -> Array:
    """ProxProp directions in every layer's grads (Algorithm 2, tau = 1).  Returns the loss.

    Hidden Linear/Conv2d layers: grads = theta^k - theta^{k+1} with theta^{k+1} the
    proximal step (11) -- bias included, batch-sum data term, batch-mean loss.
    The last parametrised layer: the plain gradient.  ``model.cg_info`` maps each
    prox layer's index to its CG record (or None).
    """
    check_proxprop_options(
        tau_theta, solver, cg_iters, cg_backend, cg_variant, cg_tol, space, dtype=x.dtype
    )
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
