"""Checkpoints are validated against the model and the run before anything is restored."""

import json

import numpy as np
import pytest

from proxnp.cli import main
from proxnp.training.checkpoint import CheckpointError
from proxnp.training.data import load_dataset
from proxnp.training.files import load_npz
from proxnp.training.fit import fit
from proxnp.training.models import mlp

from helpers import plant_huge_member

KW = dict(
    method="proxprop",
    solver="cg",
    cg_iters=2,
    tau_theta=0.1,
    lr=0.5,
    optimizer="nesterov",
    momentum=0.9,
    batch_size=50,
)


@pytest.fixture(scope="module")
def spirals():
    return load_dataset("spirals", subset=200)


def small_model(seed=0):
    return mlp([2, 16, 3], rng=np.random.default_rng(seed))


@pytest.fixture
def ckpt(spirals, tmp_path):
    path = tmp_path / "ckpt.npz"
    fit(small_model(), spirals, epochs=2, checkpoint=path, **KW)
    return path


def rewrite(path, edit):
    """Load the checkpoint's arrays and meta, let ``edit`` change them, save again."""
    arrays = load_npz(path)
    meta = json.loads(arrays.pop("meta").tobytes())
    edit(arrays, meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


def resume(path, data, epochs=3, **kw):
    model = small_model(seed=7)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    try:
        return fit(model, data, epochs=epochs, checkpoint=path, resume=True, **{**KW, **kw})
    finally:
        resume.untouched = all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def _set(key, value):
    def edit(arrays, meta):
        meta[key] = value

    return edit


def _drop_meta(key):
    def edit(arrays, meta):
        del meta[key]

    return edit


def _drop_opt(arrays, meta):
    for k in [k for k in arrays if k.startswith("opt/")]:
        del arrays[k]


def _extra_layer(arrays, meta):
    arrays["opt/momentum/7.W"] = np.zeros((2, 16), np.float32)


def _wrong_shape(arrays, meta):
    arrays["opt/momentum/0.W"] = np.zeros((16, 2), np.float32)


def _wrong_dtype(arrays, meta):
    arrays["opt/momentum/0.b"] = arrays["opt/momentum/0.b"].astype(np.float64)


def _nan_weight(arrays, meta):
    arrays["model/0.W"][1, 3] = np.nan


def _inf_buffer(arrays, meta):
    arrays["opt/momentum/2.b"][0] = np.inf


def _huge_rng_state(arrays, meta):
    meta["rng"]["state"]["state"] = 2**200


def _short_history(arrays, meta):
    meta["history"]["epochs"].pop()


def _string_loss(arrays, meta):
    meta["history"]["epochs"][1]["train_loss"] = "low"


@pytest.mark.parametrize(
    "edit,message",
    [
        (_drop_meta("history"), "meta lacks history"),
        (_drop_meta("settings"), "meta lacks settings"),
        (_set("epoch", "two"), "meta field 'epoch' must be an integer >= 1, got 'two'"),
        (_set("epoch", 0), "meta field 'epoch' must be an integer >= 1, got 0"),
        (_set("opt_t", 5), "5 optimizer steps do not match 2 epochs of 4 batches"),
        (_set("rng", {"bit_generator": "PCG64", "state": "x"}), "meta field 'rng' is not a PCG64"),
        (_huge_rng_state, "meta field 'rng' is not a PCG64"),
        (
            _set("format", 2),
            "checkpoint format 2 was written by a newer proxnp; this version reads format 1",
        ),
        (_drop_meta("format"), "checkpoint format None is not one proxnp writes"),
        (_set("settings", [1]), "meta field 'settings' must be a JSON object"),
        (_short_history, "history holds 2 records, expected 3"),
        (_string_loss, "history record 1: train_loss = 'low' is not a finite number"),
        (_drop_opt, "missing ['opt/momentum/0.W', 'opt/momentum/0.b'"),
        (_extra_layer, "unexpected ['opt/momentum/7.W']"),
        (_wrong_shape, r"opt/momentum/0.W: expected float32(2, 16), got float32(16, 2)"),
        (_wrong_dtype, r"opt/momentum/0.b: expected float32(16,), got float64(16,)"),
        (_nan_weight, "model/0.W contains NaN or inf"),
        (_inf_buffer, "opt/momentum/2.b contains NaN or inf"),
    ],
)
def test_a_bad_checkpoint_is_refused_and_nothing_restored(ckpt, spirals, edit, message):
    rewrite(ckpt, edit)
    with pytest.raises(CheckpointError) as info:
        resume(ckpt, spirals)
    assert str(info.value).startswith(str(ckpt)) and message in str(info.value)
    assert resume.untouched


@pytest.mark.parametrize(
    "change,name",
    [
        (dict(lr=0.4), "lr"),
        (dict(optimizer="sgd"), "optimizer"),
        (dict(method="backprop"), "method"),
        (dict(seed=3), "seed"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused(ckpt, spirals, change, name):
    with pytest.raises(CheckpointError, match=f"saved by a run with other settings .*{name}"):
        resume(ckpt, spirals, **change)


def test_a_checkpoint_of_the_same_model_on_other_data_is_refused(ckpt, spirals):
    """4 batches of 50 either way: only the run's identity tells the two runs apart."""
    other = load_dataset("spirals", subset=210)
    with pytest.raises(CheckpointError, match=r"saved by a run with other settings \(data\)"):
        resume(ckpt, other)
    with pytest.raises(CheckpointError, match=r"other settings \(run_id\)"):
        resume(ckpt, spirals, run_id="another run")
    assert resume.untouched


@pytest.mark.parametrize("damage", ["member header", "deflate stream"])
def test_damaged_zip_members_are_one_error_naming_the_file(ckpt, spirals, damage):
    import zipfile

    if damage == "deflate stream":
        np.savez_compressed(ckpt, **load_npz(ckpt))
    with zipfile.ZipFile(ckpt) as zf:
        info = zf.getinfo("model/0.W.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw = bytearray(ckpt.read_bytes())
    if damage == "member header":
        raw[info.header_offset : info.header_offset + 4] = b"XXXX"  # its signature
    else:
        for i in range(start, start + info.compress_size):
            raw[i] ^= 0x5A  # every byte of the compressed data
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"^{ckpt}: not a readable"):
        resume(ckpt, spirals)
    assert resume.untouched


def test_adam_needs_its_buffers_and_momentum_zero_has_none(spirals, tmp_path):
    path = tmp_path / "adam.npz"
    fit(small_model(), spirals, epochs=1, checkpoint=path, **{**KW, "optimizer": "adam"})
    assert {k.split("/")[1] for k in load_npz(path) if k.startswith("opt/")} == {"m", "v"}
    rewrite(path, lambda arrays, meta: arrays.pop("opt/v/0.W"))
    with pytest.raises(CheckpointError, match=r"missing \['opt/v/0.W'\]"):
        resume(path, spirals, optimizer="adam")
    plain = tmp_path / "sgd.npz"
    kw = {**KW, "optimizer": "sgd", "momentum": 0.0}
    fit(small_model(), spirals, epochs=1, checkpoint=plain, **kw)
    assert resume(plain, spirals, epochs=2, **kw)["status"] == "ok"


def test_resume_needs_at_least_the_epochs_saved(ckpt, spirals):
    with pytest.raises(ValueError, match="already holds 2 epochs"):
        resume(ckpt, spirals, epochs=1)
    # as many as saved: nothing to train, the saved history comes back (a run killed after
    # its last checkpoint writes its final outputs from it)
    saved = json.loads(load_npz(ckpt)["meta"].tobytes())["history"]
    assert resume(ckpt, spirals, epochs=2) == saved and not resume.untouched


def test_a_member_declaring_a_huge_array_is_refused_from_its_header(ckpt, spirals):
    """A zip member whose .npy header declares 4 GB: refused before a byte is allocated."""
    plant_huge_member(ckpt, "model/0.W.npy", (32768, 32768), 64)
    with pytest.raises(
        CheckpointError,
        match=r"declares shape \(32768, 32768\) \(4294967296 "
        r"bytes\) but holds 64 bytes",
    ):
        resume(ckpt, spirals)


@pytest.mark.slow
def test_cli_resume_of_a_bad_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    argv = [
        "train",
        "--dataset",
        "spirals",
        "--hidden",
        "8",
        "--batch-size",
        "100",
        "--out-dir",
        str(out),
    ]
    assert main(argv + ["--epochs", "1"]) == 0
    rewrite(out / "checkpoint.npz", _nan_weight)
    assert main(argv + ["--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"proxnp: error: {out / 'checkpoint.npz'}: model/0.W contains NaN or inf"
