"""CuPy parity for the whole method (run on a machine with a GPU; skipped elsewhere)."""
import numpy as np
import pytest
from helpers import batch, mlp, small_convnet

import proxnp as pn
from proxnp.gradcheck import rel_error

pytestmark = pytest.mark.gpu


def to_float32(model):
    for layer in model.layers:
        layer.params = {k: v.astype(np.float32) for k, v in layer.params.items()}
    return model


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize("solver,space", [("exact", "auto"), ("cg", "auto"), ("cg", "gram"),
                                          ("cg", "matfree"), ("gradient", "auto")])
def test_proxprop_directions_match_cpu(kind, solver, space):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        model, (x, y) = to_float32(mlp([20, 30, 25, 5])), batch(rng, (10, 20), 5, np.float32)
    else:
        model, (x, y) = to_float32(small_convnet()), batch(rng, (4, 3, 8, 8), 3, np.float32)
    if solver == "exact" and space == "matfree":
        pytest.skip("exact needs a Gram matrix")
    loss_fn = pn.SoftmaxCrossEntropy()
    pn.proxprop(model, loss_fn, x, y, solver=solver, tau_theta=0.5, space=space)
    cpu = [{k: v.copy() for k, v in layer.grads.items()} for layer in model.layers if layer.params]
    model.to("gpu")
    pn.proxprop(model, loss_fn, pn.to_device(x, "gpu"), pn.to_device(y, "gpu"), solver=solver,
                tau_theta=0.5, space=space)
    gpu = [layer.grads for layer in model.layers if layer.params]
    for c, g in zip(cpu, gpu):
        for k in c:
            assert type(g[k]).__module__.startswith("cupy") and g[k].dtype == np.float32
            assert rel_error(g[k], c[k]) < 1e-4


def test_training_matches_cpu():
    from proxnp.data import load_dataset
    from proxnp.experiments import mlp as build
    from proxnp.train import fit
    data = load_dataset("digits", subset=300)
    hist = {}
    for device in ("cpu", "gpu"):
        model = build((64, 64, 32, 10), rng=np.random.default_rng(0)).to(device)
        hist[device] = fit(model, data, method="proxprop", solver="cg", tau_theta=0.05, lr=1.0,
                           epochs=2, batch_size=50)
    for a, b in zip(hist["cpu"]["epochs"], hist["gpu"]["epochs"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 * max(1.0, a["train_loss"])


def test_cli_compare_on_gpu(tmp_path):
    from proxnp.cli import main
    assert main(["compare", "--device", "gpu", "--epochs", "2", "--out-dir", str(tmp_path / "g")]) == 0
