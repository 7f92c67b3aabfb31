"""Finite-difference gradient checks (use float64).

Two checks, as in CS231n's ``gradient_check.py`` and Chainer's ``check_backward``:

* :func:`numerical_gradient` -- full central differences, one entry at a time:
  (f(x + h e_i) - f(x - h e_i)) / 2h.  For small tensors.  Expect a relative
  error of ~1e-8 or smaller in float64 with h = 1e-6 for smooth functions.
* :func:`directional_check` -- compares <grad, v> with the central difference
  of f along random unit directions v: two function calls per direction, so it
  scales to big layers.  Expect ~1e-8 in float64.

All functions perturb *copies*; the caller's arrays are never changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .backend import Array, get_xp, to_numpy
from .layers import Layer


def rel_error(x: ArrayLike, y: ArrayLike, eps: float = 1e-300) -> float:
    """max abs(x - y) / max(abs(x), abs(y)) over all entries: 0 for equal arrays, ~1 for unrelated ones."""
    x, y = np.asarray(to_numpy(x), dtype=np.float64), np.asarray(to_numpy(y), dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"rel_error: shapes differ, {x.shape} vs {y.shape}")
    scale = max(np.abs(x).max(initial=0.0), np.abs(y).max(initial=0.0), eps)
    return float(np.abs(x - y).max(initial=0.0) / scale)


def numerical_gradient(f: Callable[[Array], Any], x: Array, h: float = 1e-6) -> Array:
    """Central-difference gradient of the scalar function f at x (any shape).

    f receives a perturbed copy of x; x itself is left unchanged.
    """
    xp = get_xp(x)
    x = x.copy()
    grad = xp.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i].copy()
        flat[i] = old + h
        f_plus = float(f(x))
        flat[i] = old - h
        f_minus = float(f(x))
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2 * h)
    return grad


def directional_check(
    f: Callable[[Array], Any],
    x: Array,
    grad: Array,
    n_dirs: int = 5,
    h: float = 1e-5,
    rng: np.random.Generator | None = None,
) -> float:
    """Largest relative error between <grad, v> and (f(x+hv) - f(x-hv)) / 2h over random v.

    Each error is abs(analytic - numeric) / max(abs(analytic), abs(numeric)), with a floor of
    1e-12 * ||grad|| so a direction nearly orthogonal to grad does not divide by 0.
    """
    xp = get_xp(x)
    rng = np.random.default_rng(0) if rng is None else rng
    gnorm = float(xp.linalg.norm(grad)) or 1.0
    worst = 0.0
    for _ in range(n_dirs):
        v = xp.asarray(rng.standard_normal(x.shape))
        v = (v / xp.linalg.norm(v)).astype(x.dtype)
        analytic = float((grad * v).sum())
        numeric = (float(f(x + h * v)) - float(f(x - h * v))) / (2 * h)
        scale = max(abs(analytic), abs(numeric), 1e-12 * gnorm)
        worst = max(worst, abs(analytic - numeric) / scale)
    return worst


def check_layer(
    layer: Layer, x: Array, rng: np.random.Generator | None = None, h: float = 1e-6
) -> dict[str, float]:
    """Relative errors of a layer's backward against central differences.

    Uses the scalar s(x, params) = sum(layer.forward(x) * dy) for a random dy, so
    ds/dx = layer.backward(dy).  Returns {'x': err, 'W': err, ...}.
    """
    rng = np.random.default_rng(1) if rng is None else rng
    xp = get_xp(x)
    y = layer.forward(x)
    dy = xp.asarray(rng.standard_normal(y.shape)).astype(y.dtype)
    dx = layer.backward(dy)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    errors = {}
    if dx is not None:
        errors["x"] = rel_error(
            dx, numerical_gradient(lambda xx: (layer.forward(xx) * dy).sum(), x, h)
        )
    for name, value in layer.params.items():

        def f(p, name=name):
            saved = layer.params[name]
            layer.params[name] = p
            out = (layer.forward(x) * dy).sum()
            layer.params[name] = saved
            return out

        errors[name] = rel_error(grads[name], numerical_gradient(f, value, h))
    return errors
