"""CuPy parity for the whole method (run on a machine with a GPU; skipped elsewhere)."""

import numpy as np
import pytest

import proxnp as pn
from proxnp.cli import main
from proxnp.gradcheck import rel_error
from proxnp.training.data import load_dataset
from proxnp.training.fit import fit
from proxnp.training.models import mlp as build

from helpers import batch, mlp, small_convnet
from test_data import write_cifar

pytestmark = pytest.mark.gpu


def to_float32(model):
    for layer in model.layers:
        layer.params = {k: v.astype(np.float32) for k, v in layer.params.items()}
    return model


def cpu_then_gpu_directions(model, x, y, **options):
    """ProxProp directions of one step on the CPU, then (model moved) on the GPU: (cpu, gpu)."""
    loss_fn = pn.SoftmaxCrossEntropy()
    pn.proxprop(model, loss_fn, x, y, **options)
    cpu = [{k: v.copy() for k, v in model.layers[i].grads.items()} for i in model.parametrised()]
    model.to("gpu")
    pn.proxprop(model, loss_fn, pn.to_device(x, "gpu"), pn.to_device(y, "gpu"), **options)
    return cpu, [model.layers[i].grads for i in model.parametrised()]


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize(
    "solver,space",
    [
        ("exact", "auto"),
        ("cg", "auto"),
        ("cg", "col_gram"),
        ("cg", "matfree"),
        ("gradient", "auto"),
    ],
)
def test_proxprop_directions_match_cpu(kind, solver, space):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        model, (x, y) = to_float32(mlp([20, 30, 25, 5])), batch(rng, (10, 20), 5, np.float32)
    else:
        model, (x, y) = to_float32(small_convnet()), batch(rng, (4, 3, 8, 8), 3, np.float32)
    if solver == "exact" and space == "matfree":
        pytest.skip("exact needs a Gram matrix")
    cpu, gpu = cpu_then_gpu_directions(model, x, y, solver=solver, tau_theta=0.5, space=space)
    for c, g in zip(cpu, gpu):
        for k in c:
            assert type(g[k]).__module__.startswith("cupy") and g[k].dtype == np.float32
            assert rel_error(g[k], c[k]) < 1e-4


def test_training_matches_cpu():
    data = load_dataset("digits", subset=300)
    hist = {}
    for device in ("cpu", "gpu"):
        model = build((64, 64, 32, 10), rng=np.random.default_rng(0)).to(device)
        hist[device] = fit(
            model,
            data,
            method="proxprop",
            solver="cg",
            tau_theta=0.05,
            lr=1.0,
            epochs=2,
            batch_size=50,
        )
    for a, b in zip(hist["cpu"]["epochs"], hist["gpu"]["epochs"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 * max(1.0, a["train_loss"])


def test_cli_compare_on_gpu(tmp_path):
    assert (
        main(["compare", "--device", "gpu", "--epochs", "2", "--out-dir", str(tmp_path / "g")]) == 0
    )


@pytest.mark.parametrize("solver,iters", [("exact", 3), ("cg", 3), ("cg", 10)])
def test_float32_gpu_matches_float64_cpu_on_paper_mlp(solver, iters):
    """The paper's MLP shapes: a float32 GPU direction within float32 accuracy of float64 CPU."""
    rng = np.random.default_rng(0)
    x, y = rng.random((48, 3072)), rng.integers(0, 10, 48)
    loss_fn = pn.SoftmaxCrossEntropy()
    ref = mlp([3072, 4000, 1000, 4000, 10], seed=1, dtype=np.float64)
    pn.proxprop(ref, loss_fn, x, y, solver=solver, cg_iters=iters, tau_theta=0.05)
    gpu = to_float32(mlp([3072, 4000, 1000, 4000, 10], seed=1, dtype=np.float64)).to("gpu")
    pn.proxprop(
        gpu,
        loss_fn,
        pn.to_device(x.astype(np.float32), "gpu"),
        pn.to_device(y, "gpu"),
        solver=solver,
        cg_iters=iters,
        tau_theta=0.05,
    )
    # The metric of the CPU test (test_prox.py): the layer's whole direction, W and b together.
    # (b alone is less accurate in float32 after a few CG steps, on the CPU as well: it is
    # 1^T u, a sum with cancellation -- about 5e-4 for cg3 on layer 1.)
    for i in ref.parametrised():
        d32 = gpu.layers[i].grads
        assert all(
            type(v).__module__.startswith("cupy") and v.dtype == np.float32 for v in d32.values()
        )
        d64 = np.concatenate([ref.layers[i].grads[k].ravel() for k in ("W", "b")])
        d32 = np.concatenate([pn.to_numpy(d32[k]).ravel() for k in ("W", "b")])
        err = np.linalg.norm(d32 - d64) / np.linalg.norm(d64)
        assert err <= 1e-4, (i, err)


def test_checkpoint_resume_on_gpu_equals_uninterrupted(tmp_path):
    data = load_dataset("spirals", subset=400)
    kw = dict(method="proxprop", solver="cg", tau_theta=0.05, lr=1.0, batch_size=50)
    full = fit(build((2, 32, 32, 3), rng=np.random.default_rng(0)).to("gpu"), data, epochs=4, **kw)
    ckpt = tmp_path / "ckpt.npz"
    fit(
        build((2, 32, 32, 3), rng=np.random.default_rng(0)).to("gpu"),
        data,
        epochs=2,
        checkpoint=ckpt,
        **kw,
    )
    resumed = build((2, 32, 32, 3), rng=np.random.default_rng(5)).to("gpu")
    h = fit(resumed, data, epochs=4, checkpoint=ckpt, resume=True, **kw)
    assert [r["train_loss"] for r in h["epochs"]] == pytest.approx(
        [r["train_loss"] for r in full["epochs"]], rel=1e-6
    )
    assert resumed.device == "gpu"


def test_save_load_round_trip_from_gpu(tmp_path):
    model = small_convnet().to("gpu")
    pn.save_model(model, tmp_path / "m.npz")
    back = small_convnet(seed=3).to("gpu")
    pn.load_model(back, tmp_path / "m.npz")
    for i in model.parametrised():
        for k, v in model.layers[i].params.items():
            w = back.layers[i].params[k]
            assert type(w).__module__.startswith("cupy")
            np.testing.assert_array_equal(pn.to_numpy(w), pn.to_numpy(v))


def test_cli_reproduce_on_gpu(tmp_path):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", n_per_batch=20)
    for exp in ("mlp", "convnet"):
        assert (
            main(
                [
                    "reproduce",
                    exp,
                    "--device",
                    "gpu",
                    "--data-dir",
                    str(tmp_path / "data"),
                    "--epochs",
                    "1",
                    "--batch-size",
                    "30",
                    "--out-dir",
                    str(tmp_path / exp),
                ]
            )
            == 0
        )
        assert (tmp_path / exp / "figure.png").exists()


@pytest.mark.parametrize(
    "options",
    [dict(cg_backend="scipy"), dict(cg_variant="authors"), dict(cg_tol=1e-3, cg_iters=20)],
    ids=["scipy-cg", "authors-variant", "early-exit"],
)
def test_cg_options_match_cpu(options):
    """CuPy's own cg (through cupyx's LinearOperator), the authors' variant and the early exit.

    In float64, so that the GPU (direct basis) and the CPU (eigenbasis for 20 iterations) take
    the same early exit and agree to rounding.
    """
    rng = np.random.default_rng(1)
    model, (x, y) = mlp([20, 30, 25, 5]), batch(rng, (10, 20), 5, np.float64)
    cpu, gpu = cpu_then_gpu_directions(
        model, x, y, **(dict(solver="cg", cg_iters=3, tau_theta=0.5) | options)
    )
    for c, g in zip(cpu, gpu):
        for k, v in g.items():
            assert type(v).__module__.startswith("cupy") and v.dtype == np.float64
            assert rel_error(v, c[k]) < 1e-8, (options, k)
