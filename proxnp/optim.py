"""Optimizers that read ``layer.grads`` -- a gradient or a ProxProp direction alike.

The paper uses ProxProp as a first-order oracle: the optimizer cannot tell
nabla_theta J from the preconditioned direction (M^k)^{-1} nabla_theta J.  The learning
rate ``lr`` plays the paper's tau (arXiv 1706.04638 §4.2; docs/theory.md).

* :class:`SGD` -- momentum and Nesterov exactly as PyTorch defines them
  (buffer b <- mu b + g, Nesterov step g + mu b, theta <- theta - lr * step).
* :class:`Adam` -- Kingma & Ba with PyTorch's defaults and bias correction.

Both update the parameters in place and keep their state as arrays on the
parameters' device; ``state_dict``/``load_state_dict`` make checkpoints exact.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from .backend import Array, device_of, get_xp, to_device, to_numpy
from .fast.cpu import blas_session, scipy_single_thread
from .model import Sequential


def axpy(a: float, x: Array, y: Array, tmp: Array | None = None) -> Array:
    """In place y += a * x for arrays of one shape and dtype.

    On contiguous NumPy float arrays this is BLAS ``axpy``: one pass over y instead of a
    temporary and two (the update is memory-bound).  Elsewhere ``tmp`` (same shape and
    dtype, optional) is used as scratch.
    """
    xp = get_xp(x, y)
    if (
        xp is np
        and x.dtype == y.dtype
        and y.dtype in (np.float32, np.float64)
        and x.flags.c_contiguous
        and y.flags.c_contiguous
        and x.shape == y.shape
    ):
        with scipy_single_thread():
            out = _blas_axpy(y.dtype.char)(x.reshape(-1), y.reshape(-1), a=a)
        if out.ctypes.data != y.ctypes.data:  # never expected; keep y correct anyway
            y[...] = out.reshape(y.shape)
        return y
    tmp = xp.multiply(x, a, out=tmp)
    y += tmp
    return y


@functools.lru_cache(maxsize=4)
def _blas_axpy(dtype_char):
    import scipy.linalg.blas

    return scipy.linalg.blas.get_blas_funcs("axpy", dtype=np.dtype(dtype_char))


def check_real(name, value, low, high, low_open=False, high_open=True):
    """Raise ValueError unless ``value`` is a real number (not bool) in the stated interval.

    NaN and inf are refused everywhere (both comparisons fail for NaN; every interval is
    open at inf): an optimizer fed one turns every weight into NaN.
    """
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        where = f"> {low:g}" if high == math.inf else f"in {lo}{low:g}, {high:g}{hi}"
        raise ValueError(f"{name} must be a finite number {where}, got {value!r}")
    return float(value)


class Optimizer:
    """Base: the (layer, name) pairs of every parameter and a step counter."""

    def __init__(self, model: Sequential, lr: float) -> None:
        check_real("learning rate", lr, 0, math.inf, low_open=True)
        self.model, self.lr, self.t = model, float(lr), 0
        self.keys = [(i, k) for i, layer in enumerate(model.layers) for k in layer.params]
        self.state = {}  # name -> {key: array}
        self.scratch = {}  # (shape, dtype) -> work array

    def _pairs(self):
        for i, k in self.keys:
            layer = self.model.layers[i]
            if k not in layer.grads:
                raise RuntimeError(
                    f"layer {i} ({layer}) has no grads[{k!r}]: run "
                    "backprop(...) or proxprop(...) before opt.step()"
                )
            yield f"{i}.{k}", layer.params[k], layer.grads[k]

    def _buffer(self, name, key, like):
        buf = self.state.setdefault(name, {})
        if key not in buf:
            buf[key] = get_xp(like).zeros_like(like)
        return buf[key]

    def _scratch(self, like):
        """A reusable work array of like's shape and dtype (not part of the state)."""
        key = (like.shape, like.dtype.str)
        if key not in self.scratch:
            self.scratch[key] = get_xp(like).empty_like(like)
        return self.scratch[key]

    def state_dict(self) -> dict[str, Any]:
        """Host copies of the state, flat: {'t': t, '<name>/<key>': array}."""
        out = {"t": self.t}
        for name, bufs in self.state.items():
            for key, arr in bufs.items():
                out[f"{name}/{key}"] = to_numpy(arr)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.t = int(state["t"])
        self.state = {}
        for flat, arr in state.items():
            if flat == "t":
                continue
            name, key = flat.split("/", 1)
            i, k = key.split(".")
            like = self.model.layers[int(i)].params[k]
            self.state.setdefault(name, {})[key] = to_device(
                arr.astype(like.dtype), device_of(like)
            )


class SGD(Optimizer):
    """theta <- theta - lr * step, PyTorch's SGD.

    g = grad + weight_decay * theta;  b <- mu b + g (b = g at the first step);
    step = g + mu b (Nesterov) or b (heavy ball) or g (mu = 0).
    """

    def __init__(
        self,
        model: Sequential,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(model, lr)
        check_real("momentum", momentum, 0, 1)
        check_real("weight_decay", weight_decay, 0, math.inf)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    @blas_session()  # one BLAS thread count per step (proxnp.fast.cpu)
    def step(self) -> None:
        mu, lr = self.momentum, self.lr
        for key, p, g in self._pairs():
            tmp = self._scratch(p)
            if self.weight_decay:
                g = g + self.weight_decay * p
            if mu:
                bufs = self.state.setdefault("momentum", {})
                if key not in bufs:
                    bufs[key] = g.copy()  # PyTorch: b_1 = g_1
                else:
                    bufs[key] *= mu
                    bufs[key] += g  # b <- mu b + g
                if self.nesterov:  # theta -= lr * (g + mu * b)
                    axpy(-lr * mu, bufs[key], p, tmp)
                else:
                    g = bufs[key]
            axpy(-lr, g, p, tmp)
        self.t += 1


class Adam(Optimizer):
    """Adam: m <- b1 m + (1-b1) g, v <- b2 v + (1-b2) g^2,
    theta <- theta - lr * m_hat / (sqrt(v_hat) + eps) with bias-corrected m_hat, v_hat."""

    def __init__(
        self,
        model: Sequential,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(model, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        check_real("betas[0]", betas[0], 0, 1)
        check_real("betas[1]", betas[1], 0, 1)
        check_real("eps", eps, 0, math.inf, low_open=True)
        self.betas, self.eps = betas, eps

    @blas_session()  # one BLAS thread count per step (proxnp.fast.cpu)
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for key, p, g in self._pairs():
            xp = get_xp(p, g)
            m = self._buffer("m", key, p)
            v = self._buffer("v", key, p)
            tmp = self._scratch(p)
            m *= b1
            axpy(1 - b1, g, m, tmp)  # m <- b1 m + (1 - b1) g
            v *= b2
            xp.multiply(g, g, out=tmp)
            axpy(1 - b2, tmp, v, tmp)  # v <- b2 v + (1 - b2) g^2
            xp.sqrt(v, out=tmp)  # sqrt(v_hat) + eps
            tmp *= 1 / c2**0.5
            tmp += self.eps
            xp.divide(m, tmp, out=tmp)
            axpy(-self.lr / c1, tmp, p, tmp)  # theta -= lr m_hat / (...)
