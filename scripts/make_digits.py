"""Regenerate proxnp/data/digits.npz from scikit-learn's copy of the UCI digits set.

    python -m pip install scikit-learn && python scripts/make_digits.py

The UCI "Optical Recognition of Handwritten Digits" data (Alpaydin & Kaynak, 1998),
CC BY 4.0; 1797 images of 8x8 pixels with values 0..16, labels 0..9.
"""

import pathlib

import numpy as np
from sklearn.datasets import load_digits

out = pathlib.Path(__file__).resolve().parents[1] / "proxnp" / "data" / "digits.npz"
digits = load_digits()
images = digits.images.astype(np.uint8)  # (1797, 8, 8), values 0..16
labels = digits.target.astype(np.uint8)
assert images.max() == 16 and images.shape == (1797, 8, 8)
np.savez_compressed(out, images=images, labels=labels)
print(f"wrote {out} ({out.stat().st_size} bytes)")
