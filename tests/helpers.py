"""Small model builders and crafted files shared by the tests."""

import io
import zipfile

import numpy as np

import proxnp as pn
from proxnp.training import models


def mlp(sizes, act="relu", seed=0, dtype=np.float64):
    """proxnp.training.models.mlp, seeded and float64 by default for the tests."""
    return models.mlp(sizes, act, rng=np.random.default_rng(seed), dtype=dtype)


def small_convnet(seed=0, dtype=np.float64, channels=(3, 4, 5), hw=8, n_classes=3):
    rng = np.random.default_rng(seed)
    c0, c1, c2 = channels
    return pn.Sequential(
        pn.Conv2d(c0, c1, 3, padding=1, rng=rng, dtype=dtype),
        pn.ReLU(),
        pn.MaxPool2d(2),
        pn.Conv2d(c1, c2, 3, stride=1, padding=1, rng=rng, dtype=dtype),
        pn.ReLU(),
        pn.MaxPool2d(2),
        pn.Flatten(),
        pn.Linear(c2 * (hw // 4) ** 2, n_classes, rng=rng, dtype=dtype),
    )


def batch(rng, shape, n_classes, dtype=np.float64):
    x = rng.standard_normal(shape).astype(dtype)
    y = rng.integers(0, n_classes, size=shape[0])
    return x, y


def plant_huge_member(npz_path, member, shape, payload_bytes):
    """Rewrite ``member`` of an .npz so that its .npy header declares ``shape`` (float32)
    while the member holds only ``payload_bytes`` zero bytes -- a checkpoint "bomb"."""
    with zipfile.ZipFile(npz_path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}
    )
    members[member] = header.getvalue() + b"\0" * payload_bytes
    with zipfile.ZipFile(npz_path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
