"""Sequential's recorded activations; pn.save_model/pn.load_model round trips and bad files."""

import numpy as np
import pytest

import proxnp as pn

from helpers import mlp


def test_forward_records_activations(rng):
    model = mlp([5, 4, 3])
    x = rng.standard_normal((2, 5))
    out = model.forward(x)
    assert len(model.acts) == 4 and model.acts[0] is x and model.acts[-1] is out
    assert model.parametrised() == [0, 2]
    assert model.device == "cpu" and model.dtype == np.float64


def test_cg_info_records_each_prox_layer(rng):
    model = mlp([5, 4, 4, 3])
    assert model.cg_info == {}
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    loss_fn = pn.SoftmaxCrossEntropy()
    pn.proxprop(model, loss_fn, x, y, solver="cg", cg_iters=3)
    assert sorted(model.cg_info) == model.parametrised()[:-1]  # the last layer: no prox step
    assert all(info.iterations == 3 for info in model.cg_info.values())
    pn.proxprop(model, loss_fn, x, y, solver="exact")
    assert model.cg_info == dict.fromkeys(model.parametrised()[:-1])


def test_save_load_roundtrip_bit_exact(tmp_path, rng):
    model = mlp([5, 4, 3], seed=1, dtype=np.float32)
    path = tmp_path / "model.npz"
    pn.save_model(model, path)
    other = mlp([5, 4, 3], seed=2, dtype=np.float32)
    pn.load_model(other, path)
    for a, b in zip(model.layers, other.layers):
        for k in a.params:
            assert a.params[k].dtype == b.params[k].dtype
            assert np.array_equal(a.params[k], b.params[k])
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temp files left


def test_load_rejects_bad_files(tmp_path):
    model = mlp([5, 4, 3])
    path = tmp_path / "m.npz"
    pn.save_model(model, path)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.npz: not a readable proxnp .npz"):
        pn.load_model(model, tmp_path / "trunc.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="text.npz"):
        pn.load_model(model, tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        pn.load_model(model, tmp_path / "nothere.npz")
    with pytest.raises(ValueError, match="does not fit this model"):
        pn.load_model(mlp([5, 4, 4, 3]), path)
    with pytest.raises(ValueError, match=r"parameter 0.W: expected float64\(5, 6\)"):
        pn.load_model(mlp([5, 6, 3]), path)


def test_load_refuses_pickled_arrays(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, **{"0.W": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match="obj.npz"):
        pn.load_model(mlp([5, 4, 3]), path)
