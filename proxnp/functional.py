"""Pure forward/backward pairs: the whole of backpropagation, one operation at a time.

Every operation comes as two functions::

    out, cache = op_forward(inputs..., params...)
    grads      = op_backward(dout, cache)

``cache`` is a NamedTuple holding exactly what the backward pass needs.  Batch
first everywhere: fully connected data is (N, D), images are NCHW.  In the
paper's notation an affine operation is the linear transfer function
phi(theta, a_prev) = a_prev @ W + b, and an elementwise nonlinearity is sigma.
The namespace ``xp`` (NumPy or CuPy) is taken from the arrays.
"""

from __future__ import annotations

from typing import NamedTuple

from .backend import Array, get_xp


# --------------------------------------------------------------------------- affine
class AffineCache(NamedTuple):
    a_prev: Array  # (N, in)
    W: Array  # (in, out)


def affine_forward(a_prev: Array, W: Array, b: Array) -> tuple[Array, AffineCache]:
    """z = phi(theta, a_prev) = a_prev @ W + b.

    a_prev (N, in), W (in, out), b (out,)  ->  z (N, out).
    """
    z = a_prev @ W
    z += b
    return z, AffineCache(a_prev, W)


def affine_backward(
    dz: Array, cache: AffineCache, need_da: bool = True
) -> tuple[Array | None, Array, Array]:
    """Gradients of the affine map for upstream dz (N, out).

    da_prev = dz @ W^T (N, in);  dW = a_prev^T @ dz (in, out);  db = sum_n dz (out,).
    ``need_da=False`` skips da_prev (returns None), e.g. for the first layer.
    """
    a_prev, W = cache
    dW = a_prev.T @ dz
    db = dz.sum(axis=0)
    da_prev = affine_input_grad(dz, cache) if need_da else None
    return da_prev, dW, db


def affine_input_grad(dz: Array, cache: AffineCache) -> Array:
    """da_prev = dz @ W^T: the gradient in eq. (10) of the paper, for a linear layer."""
    return dz @ cache.W.T


# --------------------------------------------------------------------------- conv2d
class Conv2dCache(NamedTuple):
    patches_T: Array  # the patch matrix P transposed (C*kh*kw, N*Ho*Wo), see im2col
    W: Array  # (F, C, kh, kw)
    x_shape: tuple  # (N, C, H, W)
    stride: int
    padding: int


def conv_out_size(size: int, k: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * padding - k) // stride + 1


def im2col(x: Array, kh: int, kw: int, stride: int = 1, padding: int = 0) -> Array:
    """Transposed patch matrix of an NCHW batch: one column per output pixel.

    x (N, C, H, W)  ->  patches_T (C*kh*kw, N*Ho*Wo); rows ordered (c, i, j) to match
    ``W.reshape(F, -1)``, columns ordered (n, ho, wo).  The patch matrix P of the
    ridge form of (11) (one row per output pixel) is ``patches_T.T``.  Entry (i, j)
    of every window is one strided slice of the zero-padded input.
    """
    xp = get_xp(x)
    N, C, H, Wd = x.shape
    Ho, Wo = conv_out_size(H, kh, stride, padding), conv_out_size(Wd, kw, stride, padding)
    x_pad = xp.zeros((C, N, H + 2 * padding, Wd + 2 * padding), dtype=x.dtype)
    x_pad[:, :, padding : padding + H, padding : padding + Wd] = x.transpose(1, 0, 2, 3)
    patches = xp.empty((C, kh, kw, N, Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            patches[:, i, j] = x_pad[
                :, :, i : i + stride * Ho : stride, j : j + stride * Wo : stride
            ]
    return patches.reshape(C * kh * kw, N * Ho * Wo)


def col2im(
    dpatches_T: Array,
    x_shape: tuple[int, ...],
    kh: int,
    kw: int,
    stride: int = 1,
    padding: int = 0,
) -> Array:
    """Adjoint of :func:`im2col`: add every patch gradient back to its pixels.

    dpatches_T (C*kh*kw, N*Ho*Wo)  ->  dx (N, C, H, W).  Overlapping windows accumulate.
    """
    xp = get_xp(dpatches_T)
    N, C, H, Wd = x_shape
    Ho, Wo = conv_out_size(H, kh, stride, padding), conv_out_size(Wd, kw, stride, padding)
    dpatches = dpatches_T.reshape(C, kh, kw, N, Ho, Wo)
    dx_pad = xp.zeros((C, N, H + 2 * padding, Wd + 2 * padding), dtype=dpatches_T.dtype)
    for i in range(kh):
        for j in range(kw):
            dx_pad[:, :, i : i + stride * Ho : stride, j : j + stride * Wo : stride] += dpatches[
                :, i, j
            ]
    return dx_pad[:, :, padding : padding + H, padding : padding + Wd].transpose(1, 0, 2, 3)


def conv2d_forward(
    x: Array, W: Array, b: Array, stride: int = 1, padding: int = 0
) -> tuple[Array, Conv2dCache]:
    """z = phi(theta, x): 2-D cross-correlation with zero padding, as in every DL framework.

    x (N, C, H, W), W (F, C, kh, kw), b (F,)  ->  z (N, F, Ho, Wo),
    Ho = (H + 2*padding - kh) // stride + 1.  One product: z = W_mat @ patches_T + b,
    W_mat = W.reshape(F, C*kh*kw).
    """
    F, C, kh, kw = W.shape
    N, _, H, Wd = x.shape
    Ho, Wo = conv_out_size(H, kh, stride, padding), conv_out_size(Wd, kw, stride, padding)
    patches_T = im2col(x, kh, kw, stride, padding)  # (C*kh*kw, N*Ho*Wo)
    z = W.reshape(F, -1) @ patches_T + b[:, None]  # (F, N*Ho*Wo)
    z = z.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3)
    return z, Conv2dCache(patches_T, W, x.shape, stride, padding)


def conv_channel_rows(dz: Array) -> Array:
    """(N, F, Ho, Wo) -> dz_mat (F, N*Ho*Wo): one row per output channel."""
    return dz.transpose(1, 0, 2, 3).reshape(dz.shape[1], -1)


def conv_rows(dz: Array) -> Array:
    """(N, F, Ho, Wo) -> (N*Ho*Wo, F): a conv output as rows matching the patch matrix."""
    return conv_channel_rows(dz).T


def conv2d_backward(
    dz: Array, cache: Conv2dCache, need_dx: bool = True
) -> tuple[Array | None, Array, Array]:
    """Gradients of the convolution for upstream dz (N, F, Ho, Wo).

    dW = dz_mat @ patches_T^T (reshaped to W), db = sum over n, ho, wo,
    dx = col2im(W_mat^T @ dz_mat).  ``need_dx=False`` skips dx (returns None).
    """
    dz_mat = conv_channel_rows(dz)  # (F, N*Ho*Wo)
    dW = (dz_mat @ cache.patches_T.T).reshape(cache.W.shape)
    db = dz_mat.sum(axis=1)
    dx = conv2d_input_grad(dz, cache) if need_dx else None
    return dx, dW, db


def conv2d_input_grad(dz: Array, cache: Conv2dCache) -> Array:
    """dx = col2im(W_mat^T @ dz_mat): the gradient in eq. (10) of the paper, for a convolution."""
    F, C, kh, kw = cache.W.shape
    dpatches_T = cache.W.reshape(F, -1).T @ conv_channel_rows(dz)  # (C*kh*kw, N*Ho*Wo)
    return col2im(dpatches_T, cache.x_shape, kh, kw, cache.stride, cache.padding)


# --------------------------------------------------------------------- nonlinearities
class ActivationCache(NamedTuple):
    z: Array  # the pre-activation
    a: Array  # sigma(z)


def relu_forward(z: Array) -> tuple[Array, ActivationCache]:
    """a = sigma(z) = max(0, z), elementwise."""
    xp = get_xp(z)
    a = xp.maximum(z, 0)
    return a, ActivationCache(z, a)


def relu_backward(da: Array, cache: ActivationCache) -> Array:
    """dz = da * sigma'(z), sigma'(z) = [z > 0] (0 at z = 0, as in PyTorch)."""
    return da * (cache.z > 0)


def tanh_forward(z: Array) -> tuple[Array, ActivationCache]:
    """a = tanh(z)."""
    xp = get_xp(z)
    a = xp.tanh(z)
    return a, ActivationCache(z, a)


def tanh_backward(da: Array, cache: ActivationCache) -> Array:
    """dz = da * (1 - a^2)."""
    return da * (1 - cache.a * cache.a)


def sigmoid_forward(z: Array) -> tuple[Array, ActivationCache]:
    """a = 1 / (1 + exp(-z)), computed without overflow for large abs(z)."""
    xp = get_xp(z)
    e = xp.exp(-xp.abs(z))  # in (0, 1], never overflows
    a = xp.where(z >= 0, 1 / (1 + e), e / (1 + e))
    return a, ActivationCache(z, a)


def sigmoid_backward(da: Array, cache: ActivationCache) -> Array:
    """dz = da * a * (1 - a)."""
    return da * cache.a * (1 - cache.a)


# --------------------------------------------------------------------- max pooling
class MaxPoolCache(NamedTuple):
    argmax: Array  # (N, C, Ho, Wo) index i*kernel + j into the window of the chosen input
    x_shape: tuple
    kernel: int
    stride: int


def pool_window(i: int, j: int, stride: int, Ho: int, Wo: int) -> tuple[slice, ...]:
    """The index of entry (i, j) of every pooling window: x[pool_window(...)] is (N, C, Ho, Wo)."""
    return (
        slice(None),
        slice(None),
        slice(i, i + stride * Ho, stride),
        slice(j, j + stride * Wo, stride),
    )


def max_pool2d_forward(
    x: Array, kernel: int = 2, stride: int | None = None
) -> tuple[Array, MaxPoolCache]:
    """Max over kernel x kernel windows with the given stride (default: kernel).

    x (N, C, H, W) -> out (N, C, Ho, Wo).  The k*k entries of every window are stacked
    (k*k, N, C, Ho, Wo); ``argmax`` is the first position that attains the maximum, so
    the gradient reaches exactly one input per window.
    """
    xp = get_xp(x)
    stride = kernel if stride is None else stride
    N, C, H, Wd = x.shape
    Ho, Wo = conv_out_size(H, kernel, stride, 0), conv_out_size(Wd, kernel, stride, 0)
    windows = xp.stack(
        [x[pool_window(i, j, stride, Ho, Wo)] for i in range(kernel) for j in range(kernel)]
    )
    argmax = windows.argmax(axis=0)
    out = windows.max(axis=0)
    return out, MaxPoolCache(argmax, x.shape, kernel, stride)


def max_pool2d_backward(dout: Array, cache: MaxPoolCache) -> Array:
    """Route each output gradient to the one arg-max input of its window (overlaps add)."""
    xp = get_xp(dout)
    argmax, x_shape, k, s = cache
    dx = xp.zeros(x_shape, dtype=dout.dtype)
    for idx in range(k * k):
        i, j = divmod(idx, k)
        dx[pool_window(i, j, s, dout.shape[2], dout.shape[3])] += dout * (argmax == idx)
    return dx


# --------------------------------------------------------------------------- flatten
class FlattenCache(NamedTuple):
    x_shape: tuple  # the input shape (N, ...)


def flatten_forward(x: Array) -> tuple[Array, FlattenCache]:
    """(N, ...) -> (N, prod(...))."""
    return x.reshape(x.shape[0], -1), FlattenCache(x.shape)


def flatten_backward(dout: Array, cache: FlattenCache) -> Array:
    """(N, prod(...)) -> the input shape."""
    return dout.reshape(cache.x_shape)


# ---------------------------------------------------------------------------- losses
class SoftmaxCECache(NamedTuple):
    p: Array  # softmax probabilities (N, K)
    y: Array  # integer labels (N,)


def softmax_cross_entropy_forward(logits: Array, y: Array) -> tuple[Array, SoftmaxCECache]:
    """L_y = mean_n [ logsumexp(logits_n) - logits_n[y_n] ]  (batch mean).

    logits (N, K), y (N,) integers in [0, K).  Stable for logits of +-1e4:
    the row maximum is subtracted before exponentiating.
    """
    xp = get_xp(logits, y)
    N = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_p = shifted - xp.log(sum_exp)
    loss = -log_p[xp.arange(N), y].mean()
    return loss, SoftmaxCECache(exp / sum_exp, y)


def softmax_cross_entropy_backward(cache: SoftmaxCECache, dloss: float | Array = 1.0) -> Array:
    """dlogits = (softmax(logits) - onehot(y)) / N."""
    xp = get_xp(cache.p)
    p, y = cache
    N = p.shape[0]
    dlogits = p.copy()
    dlogits[xp.arange(N), y] -= 1
    return dlogits * (dloss / N)


class MSECache(NamedTuple):
    diff: Array  # prediction - target (N, ...)


def mse_forward(pred: Array, target: Array) -> tuple[Array, MSECache]:
    """L = (1/N) sum_n 1/2 ||pred_n - target_n||^2  (batch mean of half squared errors)."""
    diff = pred - target
    loss = 0.5 * (diff * diff).sum() / pred.shape[0]
    return loss, MSECache(diff)


def mse_backward(cache: MSECache, dloss: float | Array = 1.0) -> Array:
    """dpred = (pred - target) / N."""
    return cache.diff * (dloss / cache.diff.shape[0])
