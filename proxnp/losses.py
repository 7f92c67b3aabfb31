"""Final losses L_y: the top of the network's energy.

Both take the batch **mean**, so dL/dlogits carries a factor 1/N (as in the
authors' code; see docs/theory.md, "Mean and sum", for why the prox data term is a sum).

    loss = loss_fn.forward(logits, y)   # 0-d array
    dlogits = loss_fn.backward()
"""

from __future__ import annotations

from typing import Protocol

from . import functional as F
from .backend import Array, get_xp
from .layers import FLOAT_DTYPES


def _check_float(name, what, x):
    if getattr(x, "dtype", None) not in FLOAT_DTYPES:
        raise ValueError(
            f"{name}: {what} must be a float32 or float64 array, got "
            f"{getattr(x, 'dtype', type(x).__name__)} (convert with "
            ".astype(np.float32))"
        )
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(
            f"{name}: empty batch ({what} of shape {x.shape}); the mean over "
            "N = 0 samples is undefined"
        )


class Loss(Protocol):
    """What :func:`proxnp.backprop` and :func:`proxnp.proxprop` need of a loss (for annotations)."""

    def forward(self, out: Array, y: Array) -> Array:
        """L_y(out) as a 0-d array; stores what :meth:`backward` needs."""
        ...

    def backward(self) -> Array:
        """dL_y/d(out) at the last forward pass."""
        ...


class SoftmaxCrossEntropy:
    """L_y(z) = mean_n [logsumexp(z_n) - z_n[y_n]] for integer labels y in [0, K).

    Labels outside [0, K) raise ValueError (a negative label would otherwise index
    from the end).  ``check_labels=False`` skips that range check -- one reduction
    and, on a GPU, one synchronisation per call -- for callers that validated all
    labels once (the fit loop does).
    """

    def __init__(self, check_labels: bool = True) -> None:
        self.cache = None
        self.check_labels = check_labels

    def forward(self, logits: Array, y: Array) -> Array:
        xp = get_xp(logits, y)
        _check_float("SoftmaxCrossEntropy", "logits", logits)
        if logits.ndim != 2:
            raise ValueError(
                f"SoftmaxCrossEntropy: expected logits (N, K), got shape {logits.shape}"
            )
        if getattr(y, "shape", None) != (logits.shape[0],):
            raise ValueError(
                f"SoftmaxCrossEntropy: expected labels ({logits.shape[0]},), "
                f"got shape {getattr(y, 'shape', type(y).__name__)}"
            )
        if not xp.issubdtype(y.dtype, xp.integer):
            raise ValueError(f"SoftmaxCrossEntropy: labels must be integers, got {y.dtype}")
        k = logits.shape[1]
        if self.check_labels:
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= k:
                raise ValueError(
                    f"SoftmaxCrossEntropy: labels must lie in [0, {k}) for {k} "
                    f"classes, got values from {lo} to {hi}"
                )
        loss, self.cache = F.softmax_cross_entropy_forward(logits, y)
        return loss

    def backward(self) -> Array:
        return F.softmax_cross_entropy_backward(self.cache)

    def __repr__(self):
        return "SoftmaxCrossEntropy()"


class MeanSquaredError:
    """L(pred) = (1/N) sum_n 1/2 ||pred_n - target_n||^2."""

    def __init__(self) -> None:
        self.cache = None

    def forward(self, pred: Array, target: Array) -> Array:
        _check_float("MeanSquaredError", "prediction", pred)
        if pred.shape != target.shape:
            raise ValueError(
                f"MeanSquaredError: prediction {pred.shape} and target "
                f"{target.shape} differ in shape"
            )
        if target.dtype != pred.dtype:
            raise ValueError(
                f"MeanSquaredError: target dtype {target.dtype} differs from "
                f"prediction dtype {pred.dtype}"
            )
        loss, self.cache = F.mse_forward(pred, target)
        return loss

    def backward(self) -> Array:
        return F.mse_backward(self.cache)

    def __repr__(self):
        return "MeanSquaredError()"
