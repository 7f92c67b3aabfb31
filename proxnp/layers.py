"""Layers: thin stateful shells over :mod:`proxnp.functional`.

Each layer holds ``params`` and ``grads`` (dicts with the same keys; empty for
parameter-free layers) and the cache of its last forward pass.

    y  = layer.forward(x)      # stores the cache
    dx = layer.backward(dy)    # *assigns* layer.grads, returns the input gradient

Parametrised layers (:class:`Linear`, :class:`Conv2d`) are the linear transfer
functions phi_l of the paper; the others make up the nonlinearities sigma_l.
A parametrised layer is affine in its parameters, phi(theta, a_prev) = A Theta with
A = [P, 1], and says so itself -- the proximal step (:mod:`proxnp.prox`) sees only P
and the error rows g::

    P = layer.design_matrix()        # (R, D), from the last forward pass
    g = layer.error_rows(dz)         # (R, out), dz = dJ/dz
    Theta = layer.theta()            # (D + 1, out) = [W_mat; b^T]
    layer.params_from_theta(Theta)   # {'W': ..., 'b': ...}
    layer.input_grad(dz)             # dJ/da_prev with the current theta   (eq. 10)

The layers run the fast kernels of :mod:`proxnp.fast.layers`, or,
inside ``with proxnp.reference():``, the plain code of :mod:`proxnp.functional`.
Default initialisation is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and b (the
PyTorch default the paper used), drawn with a NumPy Generator on the host and then
moved to the device, so CPU and GPU runs start bit-identical.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from . import functional as F
from .backend import Array, device_of, get_xp, to_device
from .fast import layers as fast_layers
from .fast import use_fast

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _ops():
    """The module whose affine, conv and pooling kernels run: fast unless inside
    proxnp.reference()."""
    return fast_layers if use_fast() else F


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}; proxnp layers use float32 or float64")
    return dtype


def _uniform_init(rng, shape, fan_in, dtype):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) drawn on the host, cast to ``dtype``."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Layer:
    """Base of all layers: no parameters, identity bookkeeping, device moves."""

    def __init__(self) -> None:
        self.params = {}
        self.grads = {}
        self.cache = None

    def to(self, device: str) -> Layer:
        """Move parameters and gradients to 'cpu' or 'gpu' (in place); returns self."""
        self.params = {k: to_device(v, device) for k, v in self.params.items()}
        self.grads = {k: to_device(v, device) for k, v in self.grads.items()}
        self.cache = None
        return self

    def _check_input(self, x, expected, ndim):
        """Raise ValueError naming the layer if x has the wrong rank, shape or dtype."""
        if (
            not hasattr(x, "shape")
            or x.ndim != ndim
            or any(e is not None and e != s for e, s in zip(expected, x.shape))
        ):
            want = "(" + ", ".join("N" if e is None else str(e) for e in expected) + ")"
            got = getattr(x, "shape", type(x).__name__)
            if hasattr(x, "shape") and x.ndim == ndim:
                got = "(" + ", ".join(["N"] + [str(s) for s in x.shape[1:]]) + ")"
            raise ValueError(f"{self}: expected input {want}, got {got}")
        if self.params:
            dtype = next(iter(self.params.values())).dtype
            if x.dtype != dtype:
                raise ValueError(
                    f"{self}: expected input dtype {dtype}, got {x.dtype} "
                    f"(cast the data, or build the model with dtype={x.dtype})"
                )
            if device_of(x) != device_of(next(iter(self.params.values()))):
                raise ValueError(
                    f"{self}: input is on {device_of(x)} but the parameters are on "
                    f"{device_of(next(iter(self.params.values())))}"
                )

    def __repr__(self):
        return f"{type(self).__name__}()"


class Linear(Layer):
    """Fully connected layer z = a_prev @ W + b, W (in, out), b (out,)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rng: np.random.Generator | None = None,
        dtype: DTypeLike = np.float32,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear needs positive sizes, got ({in_features}, {out_features})")
        dtype = _check_dtype(dtype)
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = np.random.default_rng(0) if rng is None else rng  # seeded default
        self.params["W"] = _uniform_init(rng, (in_features, out_features), in_features, dtype)
        self.params["b"] = _uniform_init(rng, (out_features,), in_features, dtype)
        self.need_input_grad = True

    def forward(self, a_prev: Array) -> Array:
        self._check_input(a_prev, (None, self.in_features), 2)
        z, self.cache = _ops().affine_forward(a_prev, self.params["W"], self.params["b"])
        return z

    def backward(self, dz: Array) -> Array | None:
        da_prev, self.grads["W"], self.grads["b"] = _ops().affine_backward(
            dz, self.cache, need_da=self.need_input_grad
        )
        return da_prev

    # the affine structure: z = [a_prev, 1] Theta, one row per sample
    def design_matrix(self) -> Array:
        """P = a_prev (N, in) of the last forward pass."""
        return self.cache.a_prev

    def error_rows(self, dz: Array) -> Array:
        """g = dz (N, out): already one row per sample."""
        return dz

    def theta(self) -> Array:
        """Theta = [W; b^T] (in + 1, out)."""
        return get_xp(self.params["W"]).concatenate([self.params["W"], self.params["b"][None, :]])

    def params_from_theta(self, Theta: Array) -> dict[str, Array]:
        """Theta (in + 1, out) -> {'W': (in, out), 'b': (out,)}."""
        return {"W": Theta[:-1], "b": Theta[-1]}

    def input_grad(self, dz: Array) -> Array:
        """da_prev = dz @ W^T (eq. 10)."""
        return _ops().affine_input_grad(dz, self.cache)

    def __repr__(self):
        return f"Linear({self.in_features}\u2192{self.out_features})"


class Conv2d(Layer):
    """2-D convolution (NCHW), W (out, in, kh, kw), b (out,), zero padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        *,
        rng: np.random.Generator | None = None,
        dtype: DTypeLike = np.float32,
    ) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
        if min(in_channels, out_channels, kh, kw, stride) < 1 or padding < 0:
            raise ValueError("Conv2d needs positive channels, kernel and stride and padding >= 0")
        dtype = _check_dtype(dtype)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = (int(kh), int(kw)), int(stride), int(padding)
        fan_in = in_channels * kh * kw
        rng = np.random.default_rng(0) if rng is None else rng  # seeded default
        self.params["W"] = _uniform_init(rng, (out_channels, in_channels, kh, kw), fan_in, dtype)
        self.params["b"] = _uniform_init(rng, (out_channels,), fan_in, dtype)
        self.need_input_grad = True

    def forward(self, x: Array) -> Array:
        self._check_input(x, (None, self.in_channels, None, None), 4)
        kh, kw = self.kernel_size
        if x.shape[2] + 2 * self.padding < kh or x.shape[3] + 2 * self.padding < kw:
            raise ValueError(f"{self}: input {x.shape[2]}x{x.shape[3]} is smaller than the kernel")
        z, self.cache = _ops().conv2d_forward(
            x, self.params["W"], self.params["b"], self.stride, self.padding
        )
        return z

    def backward(self, dz: Array) -> Array | None:
        dx, self.grads["W"], self.grads["b"] = _ops().conv2d_backward(
            dz, self.cache, need_dx=self.need_input_grad
        )
        return dx

    # the affine structure: z = [P, 1] Theta, one row per output pixel
    def design_matrix(self) -> Array:
        """P (N*Ho*Wo, C*kh*kw): the im2col patches of the last forward pass, one row per pixel."""
        return self.cache.patches_T.T

    def error_rows(self, dz: Array) -> Array:
        """g (N*Ho*Wo, F): dz (N, F, Ho, Wo) as one row per output pixel."""
        return F.conv_rows(dz)

    def theta(self) -> Array:
        """Theta = [W_mat^T; b^T] (C*kh*kw + 1, F), W_mat = W.reshape(F, -1)."""
        W = self.params["W"]
        return get_xp(W).concatenate([W.reshape(W.shape[0], -1).T, self.params["b"][None, :]])

    def params_from_theta(self, Theta: Array) -> dict[str, Array]:
        """Theta (C*kh*kw + 1, F) -> {'W': (F, C, kh, kw), 'b': (F,)}."""
        return {"W": Theta[:-1].T.reshape(self.params["W"].shape), "b": Theta[-1]}

    def input_grad(self, dz: Array) -> Array:
        """dx = col2im(W_mat^T @ dz_mat) (eq. 10)."""
        return _ops().conv2d_input_grad(dz, self.cache)

    def __repr__(self):
        kh, kw = self.kernel_size
        return (
            f"Conv2d({self.in_channels}\u2192{self.out_channels}, {kh}x{kw}, "
            f"stride={self.stride}, padding={self.padding})"
        )


class ReLU(Layer):
    """a = max(0, z)."""

    def forward(self, z: Array) -> Array:
        a, self.cache = F.relu_forward(z)
        return a

    def backward(self, da: Array) -> Array:
        return F.relu_backward(da, self.cache)


class Tanh(Layer):
    """a = tanh(z)."""

    def forward(self, z: Array) -> Array:
        a, self.cache = F.tanh_forward(z)
        return a

    def backward(self, da: Array) -> Array:
        return F.tanh_backward(da, self.cache)


class Sigmoid(Layer):
    """a = 1 / (1 + exp(-z))."""

    def forward(self, z: Array) -> Array:
        a, self.cache = F.sigmoid_forward(z)
        return a

    def backward(self, da: Array) -> Array:
        return F.sigmoid_backward(da, self.cache)


class MaxPool2d(Layer):
    """Max pooling over kernel x kernel windows (stride defaults to the kernel)."""

    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.stride = self.kernel_size if stride is None else int(stride)
        if self.kernel_size < 1 or self.stride < 1:
            raise ValueError("MaxPool2d needs kernel_size >= 1 and stride >= 1")

    def forward(self, x: Array) -> Array:
        self._check_input(x, (None, None, None, None), 4)
        if min(x.shape[2], x.shape[3]) < self.kernel_size:
            raise ValueError(f"{self}: input {x.shape[2]}x{x.shape[3]} is smaller than the window")
        out, self.cache = _ops().max_pool2d_forward(x, self.kernel_size, self.stride)
        return out

    def backward(self, dout: Array) -> Array:
        return _ops().max_pool2d_backward(dout, self.cache)

    def __repr__(self):
        return f"MaxPool2d({self.kernel_size}, stride={self.stride})"


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W)."""

    def forward(self, x: Array) -> Array:
        out, self.cache = F.flatten_forward(x)
        return out

    def backward(self, dout: Array) -> Array:
        return F.flatten_backward(dout, self.cache)


def is_parametrised(layer: object) -> bool:
    """True for the linear transfer functions phi_l: the layers that state their affine
    structure (Linear, Conv2d, or any layer with ``design_matrix``)."""
    return hasattr(layer, "design_matrix")
