"""Loss functions and the model refuse bad labels, empty batches and integer input."""

import numpy as np
import pytest

import proxnp as pn
from proxnp.training.models import mlp


@pytest.mark.parametrize(
    "y,message",
    [
        ([0, -1, 2], r"labels must lie in \[0, 3\) for 3 classes, got values from -1 to 2"),
        ([0, 3, 1], r"labels must lie in \[0, 3\) for 3 classes, got values from 0 to 3"),
    ],
)
def test_cross_entropy_rejects_labels_outside_the_classes(y, message):
    logits = np.zeros((3, 3))
    with pytest.raises(ValueError, match=message):
        pn.SoftmaxCrossEntropy().forward(logits, np.array(y))


def test_cross_entropy_label_check_is_what_makes_minus_one_an_error():
    """Without the check, -1 would silently index the last class (NumPy semantics)."""
    logits = np.log(np.array([[0.7, 0.2, 0.1]]))
    unchecked = pn.SoftmaxCrossEntropy(check_labels=False).forward(logits, np.array([-1]))
    assert float(unchecked) == pytest.approx(-np.log(0.1))


@pytest.mark.parametrize("loss", [pn.SoftmaxCrossEntropy(), pn.MeanSquaredError()])
def test_losses_reject_an_empty_batch(loss):
    target = np.zeros(0, np.int64) if isinstance(loss, pn.SoftmaxCrossEntropy) else np.zeros((0, 3))
    with pytest.raises(ValueError, match=r"empty batch .* N = 0"):
        loss.forward(np.zeros((0, 3)), target)


def test_integer_input_gets_a_clear_message():
    with pytest.raises(ValueError, match=r"logits must be a float32 or float64 array, got int64"):
        pn.SoftmaxCrossEntropy().forward(np.zeros((2, 3), np.int64), np.array([0, 1]))
    model = mlp([4, 5, 3])
    with pytest.raises(
        ValueError,
        match=r"model input must be a float32 or float64 array, "
        r"got int64; convert it first",
    ) as info:
        model.forward(np.ones((2, 4), np.int64))
    assert "dtype=int64" not in str(info.value)


def test_valid_labels_still_give_the_mean_cross_entropy():
    rng = np.random.default_rng(0)
    logits, y = rng.standard_normal((5, 4)), np.array([0, 3, 1, 2, 3])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert float(pn.SoftmaxCrossEntropy().forward(logits, y)) == pytest.approx(
        -np.log(p[np.arange(5), y]).mean(), rel=1e-12
    )
