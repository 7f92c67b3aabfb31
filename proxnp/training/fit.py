"""The fit loop: mini-batches, directions, optimizer, metrics, timing, checkpoints.

    history = fit(model, data, method="proxprop", solver="cg", cg_iters=3, tau_theta=0.05,
                  optimizer="nesterov", lr=1.0, epochs=20, batch_size=100, seed=0)

Per epoch (epoch 0 = before training) it records the quantities of the paper's
figures: full-batch training loss and accuracy, validation loss and accuracy, the
average mini-batch loss, and the wall time of the epoch's training steps (evaluation
excluded).  One ``seed`` drives the shuffling (and, in the CLI, initialisation and
splits).  Batches are shuffled without replacement; the remainder is dropped, as in
the paper (45,000 / 500 = 90 batches).

A NaN/inf loss or parameter stops the run with ``status = "diverged"`` and keeps
what was recorded.  A run that stays finite but ends far above its starting loss,
or at chance level ln K, is flagged by :func:`training_verdict`.  With
``checkpoint`` set, model, optimizer, shuffling state, settings and history are
written atomically after every epoch (:mod:`proxnp.training.checkpoint`); ``resume=True``
validates that file against the run and continues from it bit for bit (asking for
the epochs the checkpoint already holds returns its history: what a run killed
after its last checkpoint needs to write its final outputs).  The checkpoint
records the run's identity -- ``run_id`` and the shape and labels of its data -- so
that a checkpoint of another run is refused, not mixed in.
"""

import hashlib
import math
import numbers
import time

import numpy as np

from .. import optim
from ..backend import get_xp, synchronize, to_device, to_numpy
from ..fast.cpu import blas_session
from ..losses import SoftmaxCrossEntropy
from ..proxprop import backprop, check_proxprop_options, proxprop
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import DataError, TrainingError

METHODS = ("backprop", "proxprop")
OPTIMIZERS = ("sgd", "nesterov", "adam")


def make_optimizer(name, model, lr, momentum=0.95):
    """'sgd' (plain, or heavy ball if momentum > 0), 'nesterov', or 'adam'.

    ``lr`` must be a finite number > 0 and ``momentum`` lie in [0, 1) (Nesterov: (0, 1));
    :mod:`proxnp.optim` checks them.
    """
    if name == "sgd":
        return optim.SGD(model, lr, momentum=momentum)
    if name == "nesterov":
        return optim.SGD(model, lr, momentum=momentum, nesterov=True)
    if name == "adam":
        return optim.Adam(model, lr)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def evaluate(model, x, y, batch_size=1000):
    """Mean loss and accuracy of the model over (x, y), in batches (exact means)."""
    loss_fn = SoftmaxCrossEntropy()
    if len(x) == 0:
        raise ValueError("evaluate: no samples")
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = model.forward(xb)
        total_loss += float(loss_fn.forward(out, yb)) * len(xb)
        correct += int((out.argmax(axis=1) == yb).sum())
    model.acts = []  # do not keep evaluation activations alive
    return total_loss / len(x), correct / len(x)


def check_data(data):
    """Raise :class:`DataError` naming the split unless every split is usable.

    Train and validation must be non-empty, the test split may be empty; in each,
    inputs and labels must come in equal numbers, inputs must be finite and labels
    integers in [0, n_classes).  Checked before training starts, for every split.
    """
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if len(x) != len(y):
            raise DataError(f"{split} split: {len(x)} inputs but {len(y)} labels")
        if len(x) == 0 and split != "test":
            raise DataError(f"{split} split is empty")
        if len(x) and not bool(get_xp(x).isfinite(x).all()):
            raise DataError(f"{split} inputs contain NaN or inf")
        y = to_numpy(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{split} labels must be integers in a 1-D array, got {y.dtype}{y.shape}"
            )
        if len(y) and (y.min() < 0 or y.max() >= data.n_classes):
            raise DataError(
                f"{split} labels must lie in 0..{data.n_classes - 1}, got {y.min()}..{y.max()}"
            )


def data_identity(data):
    """What a checkpoint records of the data it was trained on (a resumed run must match)."""
    labels = hashlib.sha256()
    for y in (data.y_train, data.y_val):
        labels.update(np.ascontiguousarray(to_numpy(y), dtype=np.int64).tobytes())
    return {
        "name": data.name,
        "n_train": len(data.x_train),
        "n_val": len(data.x_val),
        "n_test": len(data.x_test),
        "input_shape": [int(d) for d in data.x_train.shape[1:]],
        "n_classes": int(data.n_classes),
        "labels_sha256": labels.hexdigest(),
    }


def _params_finite(model):
    return all(
        bool(get_xp(v).isfinite(v).all()) for layer in model.layers for v in layer.params.values()
    )


@blas_session()  # BLAS thread counts set per operation, restored once at the end
def fit(
    model,
    data,
    *,
    method="proxprop",
    solver="cg",
    cg_iters=3,
    tau_theta=1.0,
    optimizer="nesterov",
    lr=0.1,
    momentum=0.95,
    epochs=10,
    batch_size=100,
    seed=0,
    checkpoint=None,
    resume=False,
    run_id=None,
    progress=False,
    eval_batch_size=1000,
):
    """Train ``model`` on ``data`` (a :class:`proxnp.training.data.Dataset`); return the history dict.

    The data is moved once to the model's device.  ``run_id`` (any JSON value) is
    written into the checkpoint and must match on resume.  Returns
    {"epochs": [per-epoch records], "status": "ok"|"diverged", "message": str}.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if method == "proxprop":
        check_proxprop_options(tau_theta, solver, cg_iters, dtype=model.dtype)
    n = len(data.x_train)
    for name, v in (("batch_size", batch_size), ("epochs", epochs), ("seed", seed)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if not 1 <= batch_size <= n:
        raise ValueError(
            f"batch size must be between 1 and the {n} training samples, got {batch_size}"
        )
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint path")
    check_data(data)
    opt = make_optimizer(optimizer, model, lr, momentum)
    device = model.device
    dtype = model.dtype
    x_tr, y_tr, x_va, y_va = (
        to_device(a, device)
        for a in (data.x_train.astype(dtype), data.y_train, data.x_val.astype(dtype), data.y_val)
    )
    xp = get_xp(x_tr)
    k = model.forward(x_tr[:1]).shape[-1]
    model.acts = []
    if k != data.n_classes:
        raise ValueError(f"the model has {k} outputs but the data {data.n_classes} classes")
    loss_fn = SoftmaxCrossEntropy(check_labels=False)  # check_data checked every label
    rng = np.random.default_rng([seed, 1])
    history = {"epochs": [], "status": "ok", "message": ""}

    def record(epoch, batch_loss, seconds):
        tl, ta = evaluate(model, x_tr, y_tr, eval_batch_size)
        vl, va = evaluate(model, x_va, y_va, eval_batch_size)
        prev = history["epochs"][-1]["time"] if history["epochs"] else 0.0
        history["epochs"].append(
            {
                "epoch": epoch,
                "train_loss": tl,
                "train_acc": ta,
                "val_loss": vl,
                "val_acc": va,
                "batch_loss": batch_loss,
                "epoch_time": seconds,
                "time": prev + seconds,
            }
        )
        return np.isfinite(tl) and np.isfinite(batch_loss) and _params_finite(model)

    settings = {
        "method": method,
        "solver": solver,
        "cg_iters": cg_iters,
        "tau_theta": tau_theta,
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "batch_size": batch_size,
        "seed": seed,
        "run_id": run_id,
        "data": data_identity(data),
    }
    start_epoch = 1
    if resume:
        start_epoch = (
            load_checkpoint(checkpoint, model, opt, rng, history, settings, n // batch_size) + 1
        )
        if epochs < start_epoch - 1:
            raise ValueError(
                f"{checkpoint} already holds {start_epoch - 1} epochs; ask for "
                f"at least that many to continue (got epochs={epochs})"
            )
    else:
        record(0, float("nan"), 0.0)
        history["epochs"][0]["batch_loss"] = history["epochs"][0]["train_loss"]
    bar = _progress(range(start_epoch, epochs + 1), progress, start_epoch - 1, epochs)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below
        for epoch in bar:
            perm = to_device(rng.permutation(n), device)
            synchronize(xp)
            t0 = time.perf_counter()
            loss_sum = xp.zeros((), dtype=dtype)
            for b in range(n // batch_size):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                xb, yb = x_tr[idx], y_tr[idx]
                if method == "backprop":
                    loss = backprop(model, loss_fn, xb, yb)
                else:
                    try:
                        loss = proxprop(
                            model,
                            loss_fn,
                            xb,
                            yb,
                            tau_theta=tau_theta,
                            solver=solver,
                            cg_iters=cg_iters,
                        )
                    except np.linalg.LinAlgError as exc:
                        if not _params_finite(model):
                            break  # diverged: recorded and reported below
                        raise TrainingError(
                            f"the proximal step's matrix A^T A + I/tau_theta is not positive "
                            f"definite in {np.dtype(dtype).name} at epoch {epoch} ({exc}): "
                            f"with tau_theta = {tau_theta:g}, I/tau_theta is lost in rounding; "
                            "use a smaller tau_theta (--tau-theta) or float64 (--dtype)"
                        ) from None
                opt.step()
                loss_sum += loss
            synchronize(xp)
            seconds = time.perf_counter() - t0
            ok = record(epoch, float(loss_sum) / (n // batch_size), seconds)
            if progress:
                bar.set_postfix(loss=f"{history['epochs'][-1]['train_loss']:.4f}")
            if not ok:
                history["status"] = "diverged"
                history["message"] = (
                    f"diverged at epoch {epoch}: the loss or the parameters "
                    "became NaN or inf (try a smaller learning rate)"
                )
                break
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, opt, rng, history, epoch, settings)
    return history


def _progress(iterable, enabled, initial, total):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, initial=initial, total=total, unit="epoch", leave=False)


def training_verdict(history, n_classes, lr_flag="the learning rate"):
    """('ok', '') or ('diverging', advice) for a run that stayed finite but failed.

    Diverging: the final full-batch training loss is more than twice the loss at
    epoch 0 (and at least 1 above it); or, after two or more epochs, it sits at
    chance level (loss >= 0.98 ln K, accuracy <= 1/K + 0.05) after the mini-batch
    loss of some epoch rose above 1.5 x its starting value -- a step so large that
    it killed the units.  A slow run whose loss never rose is not flagged.
    ``lr_flag`` names the setting in the advice.
    """
    if history["status"] != "ok":
        return history["status"], history["message"]
    rows = history["epochs"]
    if len(rows) < 2:
        return "ok", ""
    first, last = rows[0], rows[-1]
    if last["train_loss"] > max(2 * first["train_loss"], first["train_loss"] + 1):
        return "diverging", (
            f"diverging: the training loss rose from {first['train_loss']:.3g} "
            f"to {last['train_loss']:.3g} in {last['epoch']} epochs "
            f"(try a smaller {lr_flag})"
        )
    chance = math.log(n_classes)
    peak = max(r["batch_loss"] for r in rows[1:])
    if (
        last["epoch"] >= 2
        and last["train_loss"] >= 0.98 * chance
        and last["train_acc"] <= 1 / n_classes + 0.05
        and peak > 1.5 * first["train_loss"]
    ):
        return "diverging", (
            f"diverging: the mini-batch loss jumped to {peak:.3g} and the "
            f"training loss is stuck at chance level ({last['train_loss']:.3g}, "
            f"ln {n_classes} = {chance:.3g}; accuracy "
            f"{last['train_acc']:.2f}) after {last['epoch']} epochs "
            f"(try a smaller {lr_flag})"
        )
    return "ok", ""
