"""Test double of cupyx (see ../README.md)."""
import numpy as _np

import cupy as _cp


def scatter_add(a, slices, value):
    """cupyx.scatter_add(a, slices, value): np.add.at on the double's memory."""
    if not isinstance(a, _cp.ndarray):
        raise TypeError("cupy double: scatter_add needs a device array")
    _cp._refuse_host([value], "cupyx.scatter_add")
    _np.add.at(_cp._unwrap(a), _cp._unwrap(slices), _cp._unwrap(value))
