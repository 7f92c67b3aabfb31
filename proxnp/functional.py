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
from typing import NamedTuple

from .backend import get_xp, in_parallel, parallel_sum


# --------------------------------------------------------------------------- affine
class AffineCache(NamedTuple):
    a_prev: object  # (N, in)
    W: object       # (in, out)


def affine_forward(a_prev, W, b):
    """z = phi(theta, a_prev) = a_prev @ W + b.

    a_prev (N, in), W (in, out), b (out,)  ->  z (N, out).
    """
    z = a_prev @ W
    z += b
    return z, AffineCache(a_prev, W)


def affine_backward(dz, cache, need_da=True):
    """Gradients of the affine map for upstream dz (N, out).

    da_prev = dz @ W^T (N, in);  dW = a_prev^T @ dz (in, out);  db = sum_n dz (out,).
    ``need_da=False`` skips da_prev (returns None), e.g. for the first layer.
    """
    a_prev, W = cache
    dW = a_prev.T @ dz
    db = dz.sum(axis=0)
    da_prev = affine_input_grad(dz, cache) if need_da else None
    return da_prev, dW, db


def affine_input_grad(dz, cache):
    """da_prev = dz @ W^T: eq. (10) of the paper for a linear layer (tau = 1)."""
    return dz @ cache.W.T


# --------------------------------------------------------------------------- conv2d
class Conv2dCache(NamedTuple):
    cols_T: object      # transposed patch matrix (C*kh*kw, N*Ho*Wo), see im2col
    W: object           # (F, C, kh, kw)
    x_shape: tuple      # (N, C, H, W)
    stride: int
    padding: int


def conv_out_size(size, k, stride, padding):
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * padding - k) // stride + 1


def _channels_first(x, padding):
    """(N, C, H, W) -> (C, N, H + 2p, W + 2p), zero padded (a copy only when needed)."""
    xp = get_xp(x)
    x_t = x.transpose(1, 0, 2, 3)
    if not padding:
        return x_t
    C, N, H, W = x_t.shape
    out = xp.zeros((C, N, H + 2 * padding, W + 2 * padding), dtype=x.dtype)
    out[:, :, padding:padding + H, padding:padding + W] = x_t
    return out


def _copy_patches(cols, x_t, n0, n1, stride):
    """cols[:, i, j, n0:n1] = the (i, j)-shifted windows of the images n0..n1-1.

    cols (C, kh, kw, N, Ho, Wo), x_t (C, N, H + 2p, W + 2p) channels-first and padded.
    """
    _, kh, kw, _, Ho, Wo = cols.shape
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j, n0:n1] = x_t[:, n0:n1, i:i + stride * Ho:stride, j:j + stride * Wo:stride]


def _add_patches(dx_t, dcols, n0, n1, stride):
    """Adjoint of :func:`_copy_patches`: dx_t[:, n0:n1] += every shifted window of dcols.

    dcols (C, kh, kw, n1 - n0, Ho, Wo), dx_t (C, N, H + 2p, W + 2p).
    """
    _, kh, kw, _, Ho, Wo = dcols.shape
    for i in range(kh):
        for j in range(kw):
            dx_t[:, n0:n1, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += dcols[:, i, j]


def _patch_buffer(x, kh, kw, stride, padding):
    """(x_t, cols): the padded channels-first input and an empty (C, kh, kw, N, Ho, Wo)."""
    xp = get_xp(x)
    N, C, H, Wd = x.shape
    Ho, Wo = conv_out_size(H, kh, stride, padding), conv_out_size(Wd, kw, stride, padding)
    return _channels_first(x, padding), xp.empty((C, kh, kw, N, Ho, Wo), dtype=x.dtype)


def im2col(x, kh, kw, stride=1, padding=0):
    """Transposed patch matrix of an NCHW batch: one column per output pixel.

    x (N, C, H, W)  ->  cols_T (C*kh*kw, N*Ho*Wo); rows ordered (c, i, j) to match
    ``W.reshape(F, -1)``, columns ordered (n, ho, wo).  The patch matrix of the
    paper's ridge problem (one row per output pixel) is ``cols_T.T``.  It is built
    transposed so that every copy writes contiguous memory.
    """
    x_t, cols = _patch_buffer(x, kh, kw, stride, padding)
    in_parallel(get_xp(x), x.shape[0], lambda n0, n1: _copy_patches(cols, x_t, n0, n1, stride))
    return cols.reshape(kh * kw * x.shape[1], -1)


def col2im(dcols_T, x_shape, kh, kw, stride=1, padding=0):
    """Adjoint of :func:`im2col`: add every patch gradient back to its pixels.

    dcols_T (C*kh*kw, N*Ho*Wo)  ->  dx (N, C, H, W).  Overlapping windows accumulate.
    """
    xp = get_xp(dcols_T)
    N, C, H, Wd = x_shape
    Ho, Wo = conv_out_size(H, kh, stride, padding), conv_out_size(Wd, kw, stride, padding)
    d = dcols_T.reshape(C, kh, kw, N, Ho, Wo)
    dx_t = _padded_zeros(xp, x_shape, padding, dcols_T.dtype)
    in_parallel(xp, N, lambda n0, n1: _add_patches(dx_t, d[:, :, :, n0:n1], n0, n1, stride))
    return _unpad(dx_t, x_shape, padding)


def _padded_zeros(xp, x_shape, padding, dtype):
    """A zeroed, padded, channels-first image gradient: (C, N, H + 2p, W + 2p)."""
    N, C, H, Wd = x_shape
    return xp.zeros((C, N, H + 2 * padding, Wd + 2 * padding), dtype=dtype)


def _unpad(dx_t, x_shape, padding):
    """(C, N, H + 2p, W + 2p) -> dx (N, C, H, W), a channels-first view."""
    N, C, H, Wd = x_shape
    return dx_t[:, :, padding:padding + H, padding:padding + Wd].transpose(1, 0, 2, 3)


# On the CPU the three functions below split the batch over host threads (in_parallel:
# each thread copies its images' patches and multiplies them, BLAS on one thread), so
# that the memory-bound copies run on every core, not only the matrix products.

def conv2d_forward(x, W, b, stride=1, padding=0):
    """z = phi(theta, x): 2-D cross-correlation with zero padding, as in every DL framework.

    x (N, C, H, W), W (F, C, kh, kw), b (F,)  ->  z (N, F, Ho, Wo),
    Ho = (H + 2*padding - kh) // stride + 1.  Computed as W_mat @ cols_T + b, so z
    is stored channels-first in memory (a transposed view), which the next layer's
    im2col reads without a copy.
    """
    xp = get_xp(x, W, b)
    F, C, kh, kw = W.shape
    x_t, cols = _patch_buffer(x, kh, kw, stride, padding)
    N, Ho, Wo = cols.shape[3:]
    cols_T = cols.reshape(C * kh * kw, N * Ho * Wo)
    W_mat = W.reshape(F, -1)
    z = xp.empty((F, N * Ho * Wo), dtype=xp.result_type(W, x))

    def images(n0, n1):
        _copy_patches(cols, x_t, n0, n1, stride)
        r = slice(n0 * Ho * Wo, n1 * Ho * Wo)            # their columns of cols_T and z
        xp.matmul(W_mat, cols_T[:, r], out=z[:, r])
        z[:, r] += b[:, None]
    in_parallel(xp, N, images)
    z = z.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3)
    return z, Conv2dCache(cols_T, W, x.shape, stride, padding)


def conv_channel_rows(dz):
    """(N, F, Ho, Wo) -> (F, N*Ho*Wo), free when dz is stored channels-first."""
    return dz.transpose(1, 0, 2, 3).reshape(dz.shape[1], -1)


def conv_rows(dz):
    """(N, F, Ho, Wo) -> (N*Ho*Wo, F): a conv output as rows matching the patch matrix."""
    return conv_channel_rows(dz).T


def conv2d_backward(dz, cache, need_dx=True):
    """Gradients of the convolution for upstream dz (N, F, Ho, Wo).

    dW = dz_FR @ cols_T^T (reshaped to W), db = sum over n, ho, wo,
    dx = col2im(W_mat^T @ dz_FR).  ``need_dx=False`` skips dx (returns None).
    """
    xp = get_xp(dz, cache.W)
    N, Ho, Wo = dz.shape[0], dz.shape[2], dz.shape[3]
    dz_FR = conv_channel_rows(dz)                          # (F, N*Ho*Wo)
    dtype = xp.result_type(cache.W, dz)
    dx_t = _padded_zeros(xp, cache.x_shape, cache.padding, dtype) if need_dx else None

    def images(n0, n1):
        if need_dx:
            _input_grad_images(dz_FR, cache, dx_t, n0, n1)
        r = slice(n0 * Ho * Wo, n1 * Ho * Wo)
        return (dz_FR[:, r] @ cache.cols_T[:, r].T,)        # these images' share of dW
    dW, = parallel_sum(xp, N, images)
    dW = dW.reshape(cache.W.shape)
    db = dz_FR.sum(axis=1)
    dx = _unpad(dx_t, cache.x_shape, cache.padding) if need_dx else None
    return dx, dW, db


def conv2d_input_grad(dz, cache):
    """dx = col2im(W_mat^T @ dz_FR): eq. (10) of the paper for a convolution."""
    xp = get_xp(dz, cache.W)
    dz_FR = conv_channel_rows(dz)
    dx_t = _padded_zeros(xp, cache.x_shape, cache.padding, xp.result_type(cache.W, dz))
    in_parallel(xp, dz.shape[0], lambda n0, n1: _input_grad_images(dz_FR, cache, dx_t, n0, n1))
    return _unpad(dx_t, cache.x_shape, cache.padding)


def _input_grad_images(dz_FR, cache, dx_t, n0, n1):
    """dx of the images n0..n1-1: col2im of W_mat^T @ their columns of dz_FR."""
    F, C, kh, kw = cache.W.shape
    _, _, H, Wd = cache.x_shape
    Ho, Wo = conv_out_size(H, kh, cache.stride, cache.padding), \
        conv_out_size(Wd, kw, cache.stride, cache.padding)
    dcols = cache.W.reshape(F, -1).T @ dz_FR[:, n0 * Ho * Wo:n1 * Ho * Wo]
    _add_patches(dx_t, dcols.reshape(C, kh, kw, n1 - n0, Ho, Wo), n0, n1, cache.stride)


# --------------------------------------------------------------------- nonlinearities
class ActivationCache(NamedTuple):
    z: object   # the pre-activation
    a: object   # sigma(z)


def relu_forward(z):
    """a = sigma(z) = max(0, z), elementwise."""
    xp = get_xp(z)
    a = xp.maximum(z, 0)
    return a, ActivationCache(z, a)


def relu_backward(da, cache):
    """dz = da * sigma'(z), sigma'(z) = [z > 0] (0 at z = 0, as in PyTorch)."""
    return da * (cache.z > 0)


def tanh_forward(z):
    """a = tanh(z)."""
    xp = get_xp(z)
    a = xp.tanh(z)
    return a, ActivationCache(z, a)


def tanh_backward(da, cache):
    """dz = da * (1 - a^2)."""
    return da * (1 - cache.a * cache.a)


def sigmoid_forward(z):
    """a = 1 / (1 + exp(-z)), computed without overflow for large abs(z)."""
    xp = get_xp(z)
    e = xp.exp(-xp.abs(z))                     # in (0, 1], never overflows
    a = xp.where(z >= 0, 1 / (1 + e), e / (1 + e))
    return a, ActivationCache(z, a)


def sigmoid_backward(da, cache):
    """dz = da * a * (1 - a)."""
    return da * cache.a * (1 - cache.a)


# --------------------------------------------------------------------- max pooling
class MaxPoolCache(NamedTuple):
    argmax: object     # (N, C, Ho, Wo) index into the k*k window of the chosen input
    x_shape: tuple
    kernel: int
    stride: int


def _windows(x, kernel, stride, Ho, Wo):
    """The kernel*kernel strided views x[:, :, i::stride, j::stride], each (N, C, Ho, Wo)."""
    for idx in range(kernel * kernel):
        i, j = divmod(idx, kernel)
        yield idx, (slice(None), slice(None), slice(i, i + stride * Ho, stride),
                    slice(j, j + stride * Wo, stride))


def max_pool2d_forward(x, kernel=2, stride=None):
    """Max over kernel x kernel windows with the given stride (default: kernel).

    x (N, C, H, W) -> out (N, C, Ho, Wo).  A running maximum over the k*k window
    positions; ``argmax`` remembers the first position that attains it (ties go to
    the first, so the gradient reaches exactly one input per window).  The work is
    done channels-first, the memory order of the convolution outputs, and out is
    returned as a channels-first view, which the next convolution reads without a copy.
    """
    xp = get_xp(x)
    stride = kernel if stride is None else stride
    N, C, H, Wd = x.shape
    Ho, Wo = conv_out_size(H, kernel, stride, 0), conv_out_size(Wd, kernel, stride, 0)
    idx_dtype = xp.int8 if kernel * kernel < 128 else xp.int32
    x_t = x.transpose(1, 0, 2, 3)                 # (C, N, H, W)
    out = xp.empty((C, N, Ho, Wo), dtype=x.dtype)
    argmax = xp.zeros((C, N, Ho, Wo), dtype=idx_dtype)

    def pool_images(n0, n1):                      # images [n0, n1) of out and argmax
        x_part, out_part, argmax_part = x_t[:, n0:n1], out[:, n0:n1], argmax[:, n0:n1]
        v = xp.empty_like(out_part)
        for idx, window in _windows(x_part, kernel, stride, Ho, Wo):
            if idx == 0:
                xp.copyto(out_part, x_part[window])
                continue
            xp.copyto(v, x_part[window])             # contiguous: strided compares are slow
            better = v > out_part                    # strict: ties keep the first position
            # argmax = where(better, idx, argmax), written as a maximum: every earlier
            # index is < idx (and a masked copy of a scalar is ~20x slower in NumPy).
            xp.maximum(argmax_part, better.astype(idx_dtype) * idx_dtype(idx), out=argmax_part)
            xp.maximum(out_part, v, out=out_part)
    in_parallel(xp, N, pool_images)
    nchw = (1, 0, 2, 3)
    return out.transpose(nchw), MaxPoolCache(argmax.transpose(nchw), x.shape, kernel, stride)


def max_pool2d_backward(dout, cache):
    """Route each output gradient to the one arg-max input of its window.

    dx is laid out channels-first in memory (like the convolution outputs), so the
    convolution below reads it without a copy.
    """
    xp = get_xp(dout)
    argmax, (N, C, H, W), k, s = cache
    dx = xp.zeros((C, N, H, W), dtype=dout.dtype)
    dout_t, argmax_t = dout.transpose(1, 0, 2, 3), argmax.transpose(1, 0, 2, 3)

    def route_images(n0, n1):                     # images [n0, n1) of dx
        dx_part, dout_part, argmax_part = dx[:, n0:n1], dout_t[:, n0:n1], argmax_t[:, n0:n1]
        for idx, window in _windows(dx_part, k, s, dout.shape[2], dout.shape[3]):
            if k == s:                            # windows do not overlap: write in place
                xp.multiply(dout_part, argmax_part == idx, out=dx_part[window])
            else:
                dx_part[window] += dout_part * (argmax_part == idx)
    in_parallel(xp, N, route_images)
    return dx.transpose(1, 0, 2, 3)


# --------------------------------------------------------------------------- flatten
def flatten_forward(x):
    """(N, ...) -> (N, prod(...)); the cache is the input shape."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dout, x_shape):
    return dout.reshape(x_shape)


# ---------------------------------------------------------------------------- losses
class SoftmaxCECache(NamedTuple):
    p: object        # softmax probabilities (N, K)
    y: object        # integer labels (N,)


def softmax_cross_entropy_forward(logits, y):
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


def softmax_cross_entropy_backward(cache, dloss=1.0):
    """dlogits = (softmax(logits) - onehot(y)) / N."""
    xp = get_xp(cache.p)
    p, y = cache
    N = p.shape[0]
    dlogits = p.copy()
    dlogits[xp.arange(N), y] -= 1
    return dlogits * (dloss / N)


class MSECache(NamedTuple):
    diff: object     # prediction - target (N, ...)


def mse_forward(pred, target):
    """L = (1/N) sum_n 1/2 ||pred_n - target_n||^2  (batch mean of half squared errors)."""
    diff = pred - target
    loss = 0.5 * (diff * diff).sum() / pred.shape[0]
    return loss, MSECache(diff)


def mse_backward(cache, dloss=1.0):
    """dpred = (pred - target) / N."""
    return cache.diff * (dloss / cache.diff.shape[0])
