"""Final losses L_y: the top of the network's energy.

Both take the batch **mean**, so dL/dlogits carries a factor 1/N (as in the
authors' code; see docs/theory.md, "Mean and sum", for why the prox data term is a sum).

    loss = loss_fn.forward(logits, y)   # 0-d array
    dlogits = loss_fn.backward()
"""
from . import functional as F
from .backend import get_xp


class SoftmaxCrossEntropy:
    """L_y(z) = mean_n [logsumexp(z_n) - z_n[y_n]] for integer labels y in [0, K)."""

    def __init__(self):
        self.cache = None

    def forward(self, logits, y):
        xp = get_xp(logits, y)
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy: expected logits (N, K), got shape {logits.shape}")
        if y.shape != (logits.shape[0],):
            raise ValueError(f"SoftmaxCrossEntropy: expected labels ({logits.shape[0]},), "
                             f"got shape {y.shape}")
        if not xp.issubdtype(y.dtype, xp.integer):
            raise ValueError(f"SoftmaxCrossEntropy: labels must be integers, got {y.dtype}")
        loss, self.cache = F.softmax_cross_entropy_forward(logits, y)
        return loss

    def backward(self):
        return F.softmax_cross_entropy_backward(self.cache)

    def __repr__(self):
        return "SoftmaxCrossEntropy()"


class MeanSquaredError:
    """L(pred) = (1/N) sum_n 1/2 ||pred_n - target_n||^2."""

    def __init__(self):
        self.cache = None

    def forward(self, pred, target):
        if pred.shape != target.shape:
            raise ValueError(f"MeanSquaredError: prediction {pred.shape} and target "
                             f"{target.shape} differ in shape")
        if target.dtype != pred.dtype:
            raise ValueError(f"MeanSquaredError: target dtype {target.dtype} differs from "
                             f"prediction dtype {pred.dtype}")
        loss, self.cache = F.mse_forward(pred, target)
        return loss

    def backward(self):
        return F.mse_backward(self.cache)

    def __repr__(self):
        return "MeanSquaredError()"
