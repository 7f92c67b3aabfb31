"""Fast kernels for the affine map, the convolution and max pooling: the same results as
:mod:`proxnp.functional`, with the same signatures and caches.

The affine map is the reference code, its products on as many BLAS threads as pay for
themselves (:func:`proxnp.fast.cpu.threads_for`: one for a digits-sized layer, every free
core for the paper's 3072-4000 layer).

The reference im2col, col2im and pooling are memory-bound strided copies with short
inner rows, which NumPy runs on one core.  Here the batch is split over host threads
(:func:`proxnp.fast.cpu.in_parallel`): each thread copies its images' patches and multiplies
them, so the copies run on every core, not only the matrix products; the weight gradient
is summed over the threads' parts in a fixed order (:func:`proxnp.fast.cpu.parallel_sum`).
Max pooling keeps a running maximum over the window positions in contiguous
channels-first buffers, with a one-byte arg-max, instead of stacking the windows.
Outputs are returned as channels-first views, which the next layer reads without a copy.
On a GPU every part is the whole batch: one call per kernel.
"""

from .. import functional as F
from ..backend import get_xp
from ..functional import Conv2dCache, MaxPoolCache, conv_channel_rows, conv_out_size, pool_window
from .cpu import blas_threads, in_parallel, parallel_sum


def affine_forward(a_prev, W, b):
    """:func:`proxnp.functional.affine_forward` (z = a_prev @ W + b), on the BLAS threads
    that pay for a product of N * in * out multiply-adds."""
    with blas_threads(get_xp(a_prev, W), a_prev.shape[0] * W.size):
        return F.affine_forward(a_prev, W, b)


def affine_backward(dz, cache, need_da=True):
    """:func:`proxnp.functional.affine_backward` (da_prev, dW, db), threads as above."""
    with blas_threads(get_xp(dz, cache.W), dz.shape[0] * cache.W.size):
        return F.affine_backward(dz, cache, need_da)


def affine_input_grad(dz, cache):
    """:func:`proxnp.functional.affine_input_grad` (da_prev = dz @ W^T), threads as above."""
    with blas_threads(get_xp(dz, cache.W), dz.shape[0] * cache.W.size):
        return F.affine_input_grad(dz, cache)


def _channels_first(x, padding):
    """(N, C, H, W) -> (C, N, H + 2p, W + 2p), zero padded (a copy only when needed)."""
    xp = get_xp(x)
    x_t = x.transpose(1, 0, 2, 3)
    if not padding:
        return x_t
    C, N, H, W = x_t.shape
    out = xp.zeros((C, N, H + 2 * padding, W + 2 * padding), dtype=x.dtype)
    out[:, :, padding : padding + H, padding : padding + W] = x_t
    return out


def _copy_patches(cols, x_t, n0, n1, stride):
    """cols[:, i, j, n0:n1] = the (i, j)-shifted windows of the images n0..n1-1.

    cols (C, kh, kw, N, Ho, Wo), x_t (C, N, H + 2p, W + 2p) channels-first and padded.
    """
    _, kh, kw, _, Ho, Wo = cols.shape
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j, n0:n1] = x_t[
                :, n0:n1, i : i + stride * Ho : stride, j : j + stride * Wo : stride
            ]


def _add_patches(dx_t, dcols, n0, n1, stride):
    """Adjoint of :func:`_copy_patches`: dx_t[:, n0:n1] += every shifted window of dcols.

    dcols (C, kh, kw, n1 - n0, Ho, Wo), dx_t (C, N, H + 2p, W + 2p).
    """
    _, kh, kw, _, Ho, Wo = dcols.shape
    for i in range(kh):
        for j in range(kw):
            dx_t[:, n0:n1, i : i + stride * Ho : stride, j : j + stride * Wo : stride] += dcols[
                :, i, j
            ]


def _patch_buffer(x, kh, kw, stride, padding):
    """(x_t, cols): the padded channels-first input and an empty (C, kh, kw, N, Ho, Wo)."""
    xp = get_xp(x)
    N, C, H, Wd = x.shape
    Ho, Wo = conv_out_size(H, kh, stride, padding), conv_out_size(Wd, kw, stride, padding)
    return _channels_first(x, padding), xp.empty((C, kh, kw, N, Ho, Wo), dtype=x.dtype)


def _padded_zeros(xp, x_shape, padding, dtype):
    """A zeroed, padded, channels-first image gradient: (C, N, H + 2p, W + 2p)."""
    N, C, H, Wd = x_shape
    return xp.zeros((C, N, H + 2 * padding, Wd + 2 * padding), dtype=dtype)


def _unpad(dx_t, x_shape, padding):
    """(C, N, H + 2p, W + 2p) -> dx (N, C, H, W), a channels-first view."""
    N, C, H, Wd = x_shape
    return dx_t[:, :, padding : padding + H, padding : padding + Wd].transpose(1, 0, 2, 3)


def conv2d_forward(x, W, b, stride=1, padding=0):
    """z = phi(theta, x): 2-D cross-correlation with zero padding, as in every DL framework.

    x (N, C, H, W), W (F, C, kh, kw), b (F,)  ->  z (N, F, Ho, Wo),
    Ho = (H + 2*padding - kh) // stride + 1.  Computed as W_mat @ patches_T + b, so z
    is stored channels-first in memory (a transposed view), which the next layer's
    im2col reads without a copy.
    """
    xp = get_xp(x, W, b)
    F, C, kh, kw = W.shape
    x_t, cols = _patch_buffer(x, kh, kw, stride, padding)
    N, Ho, Wo = cols.shape[3:]
    patches_T = cols.reshape(C * kh * kw, N * Ho * Wo)
    W_mat = W.reshape(F, -1)
    z = xp.empty((F, N * Ho * Wo), dtype=xp.result_type(W, x))

    def images(n0, n1):
        _copy_patches(cols, x_t, n0, n1, stride)
        r = slice(n0 * Ho * Wo, n1 * Ho * Wo)  # their columns of patches_T and z
        xp.matmul(W_mat, patches_T[:, r], out=z[:, r])
        z[:, r] += b[:, None]

    in_parallel(xp, N, images, macs=W_mat.size * patches_T.shape[1])
    z = z.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3)
    return z, Conv2dCache(patches_T, W, x.shape, stride, padding)


def conv2d_backward(dz, cache, need_dx=True):
    """Gradients of the convolution for upstream dz (N, F, Ho, Wo).

    dW = dz_mat @ patches_T^T (reshaped to W), db = sum over n, ho, wo,
    dx = col2im(W_mat^T @ dz_mat).  ``need_dx=False`` skips dx (returns None).
    """
    xp = get_xp(dz, cache.W)
    N, Ho, Wo = dz.shape[0], dz.shape[2], dz.shape[3]
    dz_mat = conv_channel_rows(dz)  # (F, N*Ho*Wo)
    dtype = xp.result_type(cache.W, dz)
    dx_t = _padded_zeros(xp, cache.x_shape, cache.padding, dtype) if need_dx else None

    def images(n0, n1):
        if need_dx:
            _input_grad_images(dz_mat, cache, dx_t, n0, n1)
        r = slice(n0 * Ho * Wo, n1 * Ho * Wo)
        return (dz_mat[:, r] @ cache.patches_T[:, r].T,)  # these images' share of dW

    (dW,) = parallel_sum(xp, N, images, macs=(1 + need_dx) * cache.W.size * dz_mat.shape[1])
    dW = dW.reshape(cache.W.shape)
    db = dz_mat.sum(axis=1)
    dx = _unpad(dx_t, cache.x_shape, cache.padding) if need_dx else None
    return dx, dW, db


def conv2d_input_grad(dz, cache):
    """dx = col2im(W_mat^T @ dz_mat): the gradient in eq. (10) of the paper, for a convolution."""
    xp = get_xp(dz, cache.W)
    dz_mat = conv_channel_rows(dz)
    dx_t = _padded_zeros(xp, cache.x_shape, cache.padding, xp.result_type(cache.W, dz))
    in_parallel(
        xp,
        dz.shape[0],
        lambda n0, n1: _input_grad_images(dz_mat, cache, dx_t, n0, n1),
        macs=cache.W.size * dz_mat.shape[1],
    )
    return _unpad(dx_t, cache.x_shape, cache.padding)


def _input_grad_images(dz_mat, cache, dx_t, n0, n1):
    """dx of the images n0..n1-1: col2im of W_mat^T @ their columns of dz_mat."""
    F, C, kh, kw = cache.W.shape
    _, _, H, Wd = cache.x_shape
    Ho, Wo = (
        conv_out_size(H, kh, cache.stride, cache.padding),
        conv_out_size(Wd, kw, cache.stride, cache.padding),
    )
    dcols = cache.W.reshape(F, -1).T @ dz_mat[:, n0 * Ho * Wo : n1 * Ho * Wo]
    _add_patches(dx_t, dcols.reshape(C, kh, kw, n1 - n0, Ho, Wo), n0, n1, cache.stride)


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
    x_t = x.transpose(1, 0, 2, 3)  # (C, N, H, W)
    out = xp.empty((C, N, Ho, Wo), dtype=x.dtype)
    argmax = xp.zeros((C, N, Ho, Wo), dtype=idx_dtype)

    def pool_images(n0, n1):  # images [n0, n1) of out and argmax
        x_part, out_part, argmax_part = x_t[:, n0:n1], out[:, n0:n1], argmax[:, n0:n1]
        v = xp.empty_like(out_part)
        for idx in range(kernel * kernel):
            window = pool_window(*divmod(idx, kernel), stride, Ho, Wo)
            if idx == 0:
                xp.copyto(out_part, x_part[window])
                continue
            xp.copyto(v, x_part[window])  # contiguous: strided compares are slow
            better = v > out_part  # strict: ties keep the first position
            # argmax = where(better, idx, argmax), written as a maximum (every earlier
            # index is < idx): NumPy's masked copy of a scalar is far slower.
            xp.maximum(argmax_part, better.astype(idx_dtype) * idx_dtype(idx), out=argmax_part)
            xp.maximum(out_part, v, out=out_part)

    in_parallel(xp, N, pool_images, macs=x.size * kernel * kernel)  # window visits
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

    def route_images(n0, n1):  # images [n0, n1) of dx
        dx_part, dout_part, argmax_part = dx[:, n0:n1], dout_t[:, n0:n1], argmax_t[:, n0:n1]
        for idx in range(k * k):
            window = pool_window(*divmod(idx, k), s, dout.shape[2], dout.shape[3])
            if k == s:  # windows do not overlap: write in place
                xp.multiply(dout_part, argmax_part == idx, out=dx_part[window])
            else:
                dx_part[window] += dout_part * (argmax_part == idx)

    in_parallel(xp, N, route_images, macs=dout.size * k * k)
    return dx.transpose(1, 0, 2, 3)
