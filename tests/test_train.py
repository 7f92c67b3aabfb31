"""The fit loop: metrics, divergence, checkpoints and bit-exact resume."""

import numpy as np
import pytest

import proxnp as pn
from proxnp.training.data import load_dataset
from proxnp.training.fit import fit, training_verdict
from proxnp.training.models import mlp


@pytest.fixture(scope="module")
def spirals():
    return load_dataset("spirals", subset=400)


def small_model(seed=0):
    return mlp([2, 32, 32, 3], rng=np.random.default_rng(seed))


def test_history_has_the_paper_quantities(spirals):
    h = fit(
        small_model(),
        spirals,
        method="proxprop",
        solver="cg",
        cg_iters=3,
        tau_theta=0.05,
        lr=1.0,
        epochs=3,
        batch_size=50,
    )
    assert h["status"] == "ok" and [r["epoch"] for r in h["epochs"]] == [0, 1, 2, 3]
    for key in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "batch_loss",
        "epoch_time",
        "time",
    ):
        assert all(np.isfinite(r[key]) for r in h["epochs"]), key
    assert h["epochs"][-1]["train_loss"] < h["epochs"][0]["train_loss"]
    assert h["epochs"][-1]["time"] == pytest.approx(sum(r["epoch_time"] for r in h["epochs"]))


def test_divergence_stops_and_keeps_history(spirals):
    h = fit(
        small_model(),
        spirals,
        method="backprop",
        lr=1e4,
        optimizer="sgd",
        momentum=0.0,
        epochs=20,
        batch_size=50,
    )
    assert h["status"] == "diverged" and "diverged at epoch" in h["message"]
    assert 1 <= len(h["epochs"]) - 1 < 20
    assert np.isfinite(h["epochs"][0]["train_loss"])


def test_resume_is_bit_exact(spirals, tmp_path):
    kw = dict(
        method="proxprop",
        solver="cg",
        cg_iters=2,
        tau_theta=0.1,
        lr=0.5,
        optimizer="adam",
        batch_size=40,
    )
    full = small_model()
    h_full = fit(full, spirals, epochs=4, **kw)
    ckpt = tmp_path / "ckpt.npz"
    part = small_model()
    fit(part, spirals, epochs=2, checkpoint=ckpt, **kw)
    resumed = small_model(seed=99)  # different init: everything comes from disk
    h_res = fit(resumed, spirals, epochs=4, checkpoint=ckpt, resume=True, **kw)
    for a, b in zip(full.layers, resumed.layers):
        for k in a.params:
            assert np.array_equal(a.params[k], b.params[k])
    assert [r["train_loss"] for r in h_res["epochs"]] == [r["train_loss"] for r in h_full["epochs"]]


def test_bad_fit_arguments(spirals):
    with pytest.raises(ValueError, match="batch size must be between 1"):
        fit(small_model(), spirals, batch_size=10**6, epochs=1)
    with pytest.raises(ValueError, match="unknown method"):
        fit(small_model(), spirals, method="sgd", epochs=1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        fit(small_model(), spirals, optimizer="lbfgs", epochs=1)


def test_bad_data_is_refused(spirals):
    bad = spirals._replace(x_train=spirals.x_train.copy())
    bad.x_train[3, 1] = np.nan
    with pytest.raises(ValueError, match="train inputs contain NaN or inf"):
        fit(small_model(), bad, epochs=1, batch_size=50)
    with pytest.raises(ValueError, match=r"val labels must lie in 0..2"):
        fit(small_model(), spirals._replace(y_val=spirals.y_val + 5), epochs=1, batch_size=50)
    with pytest.raises(ValueError, match="labels must be integers"):
        fit(
            small_model(),
            spirals._replace(y_train=spirals.y_train.astype(float)),
            epochs=1,
            batch_size=50,
        )
    with pytest.raises(ValueError, match="inputs but"):
        fit(small_model(), spirals._replace(y_train=spirals.y_train[:-1]), epochs=1, batch_size=50)


def _history(losses, batch_losses, accs):
    rows = [
        {"epoch": i, "train_loss": l, "batch_loss": b, "train_acc": a}
        for i, (l, b, a) in enumerate(zip(losses, batch_losses, accs))
    ]
    return {"epochs": rows, "status": "ok", "message": ""}


@pytest.mark.parametrize(
    "losses,batch,accs,verdict",
    [
        ([2.30, 1.9, 1.2], [2.30, 2.1, 1.5], [0.1, 0.4, 0.6], "ok"),  # learning
        ([2.31, 2.30, 2.29], [2.31, 2.30, 2.30], [0.09, 0.10, 0.12], "ok"),  # slow, never rose
        ([2.30, 9.0, 38.0], [2.30, 20.0, 40.0], [0.1, 0.1, 0.1], "diverging"),  # rose far
        ([2.31, 3.1, 2.31], [2.31, 36.7, 2.49], [0.09, 0.09, 0.10], "diverging"),  # spike, dead
        ([2.31, 3.1], [2.31, 36.7], [0.09, 0.09], "ok"),  # one epoch: too early
    ],
)
def test_training_verdict(losses, batch, accs, verdict):
    status, message = training_verdict(_history(losses, batch, accs), 10, "--lr")
    assert status == verdict
    assert (message == "") == (verdict == "ok")
    if verdict != "ok":
        assert message.startswith("diverging: ") and message.endswith("(try a smaller --lr)")


def test_a_slow_run_at_a_tiny_learning_rate_is_not_called_diverging(spirals):
    h = fit(
        small_model(),
        spirals,
        method="backprop",
        lr=1e-5,
        optimizer="sgd",
        momentum=0.0,
        epochs=3,
        batch_size=50,
    )
    assert training_verdict(h, 3) == ("ok", "")


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(momentum=1.0), r"momentum must be a finite number in \[0, 1\), got 1.0"),
        (dict(momentum=-0.5), r"momentum must be a finite number in \[0, 1\)"),
        (dict(lr=float("nan")), "learning rate must be a finite number > 0"),
        (dict(cg_iters=10**9), "cg_iters must be an integer in \\[1, 1000\\]"),
        (dict(seed=-1), "seed must be a non-negative integer, got -1"),
        (dict(epochs=-5), "epochs must be a non-negative integer, got -5"),
        (dict(epochs=2.5), "epochs must be a non-negative integer, got 2.5"),
        (dict(resume=True), "resume=True needs the checkpoint path"),
    ],
)
def test_every_fit_value_is_checked(spirals, kw, message):
    with pytest.raises(ValueError, match=message):
        fit(small_model(), spirals, **{"epochs": 1, "batch_size": 50, **kw})


def test_an_empty_validation_split_is_named(spirals):
    empty = spirals._replace(x_val=spirals.x_val[:0], y_val=spirals.y_val[:0])
    with pytest.raises(ValueError, match="val split is empty"):
        fit(small_model(), empty, epochs=1, batch_size=50)


def test_the_model_must_have_one_output_per_class(spirals):
    with pytest.raises(ValueError, match="the model has 4 outputs but the data 3 classes"):
        fit(mlp([2, 8, 4]), spirals, epochs=1, batch_size=50)


def test_every_split_is_checked_before_training(spirals, monkeypatch):
    import sys

    from proxnp.training.errors import DataError

    fit_module = sys.modules["proxnp.training.fit"]  # the module (the package exports fit)

    def never(*args, **kw):
        raise AssertionError("trained before the data was checked")

    monkeypatch.setattr(fit_module, "proxprop", never)
    x_test = spirals.x_test.copy()
    x_test[2, 0] = np.inf
    for bad, message in [
        (spirals._replace(x_test=x_test), "test inputs contain NaN or inf"),
        (spirals._replace(y_test=spirals.y_test + 3), r"test labels must lie in 0..2"),
        (spirals._replace(y_test=spirals.y_test[:-1]), "test split: 250 inputs but 249 labels"),
        (spirals._replace(y_val=spirals.y_val.astype(float)), "val labels must be integers"),
    ]:
        with pytest.raises(DataError, match=message):
            fit(small_model(), bad, epochs=1, batch_size=50)


def test_tau_theta_is_checked_against_the_dtype():
    from proxnp.proxprop import check_tau_theta

    check_tau_theta(1e-40, np.float64)
    check_tau_theta(1e-38, np.float32)
    for tau, message in [
        (1e-40, "tau_theta = 1e-40 is too small for float32: 1/tau_theta = 1e"),
        (0.0, "tau_theta must be a finite number > 0"),
        (float("inf"), "tau_theta must be a finite number > 0"),
        (True, "tau_theta must be a finite number > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_tau_theta(tau, np.float32)
    # proxprop and fit check it against the model's dtype in their one option check
    model = mlp([64, 10, 10], rng=np.random.default_rng(0), dtype=np.float32)
    x, y = np.ones((4, 64), np.float32), np.zeros(4, dtype=int)
    too_small = "tau_theta = 1e-40 is too small for float32"
    with pytest.raises(ValueError, match=too_small):
        pn.proxprop(model, pn.SoftmaxCrossEntropy(), x, y, tau_theta=1e-40)
    with pytest.raises(ValueError, match=too_small):
        fit(model, load_dataset("digits"), tau_theta=1e-40, epochs=1, batch_size=100)


def test_a_proximal_step_float32_cannot_solve_names_tau_theta():
    """Not a diverged run: the parameters are finite, I/tau_theta is below float32's rounding."""
    from proxnp.training.errors import TrainingError

    digits = load_dataset("digits")
    model = mlp([64, 100, 10], rng=np.random.default_rng(0), dtype=np.float32)
    with pytest.raises(TrainingError, match=r"not positive definite in float32 .*--tau-theta"):
        fit(model, digits, solver="exact", tau_theta=1e37, epochs=1, batch_size=200)
