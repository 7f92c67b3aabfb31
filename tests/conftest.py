"""Shared fixtures: the array backend (numpy always, cupy when a GPU works) and dtypes."""

import numpy as np
import pytest

from proxnp.backend import gpu_available, gpu_status, to_device, to_numpy


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason=f"no usable GPU: {gpu_status()[1]}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array namespace under test."""
    if request.param == "numpy":
        return np
    import importlib

    return importlib.import_module("cupy")


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def device_name(xp):
    return "cpu" if xp is np else "gpu"


def assert_close(actual, desired, rtol=1e-7, atol=0.0, check_dtype=True):
    """assert_allclose that also checks shape and (optionally) dtype; works on CuPy arrays."""
    assert actual.shape == desired.shape, f"shape {actual.shape} != {desired.shape}"
    if check_dtype:
        assert actual.dtype == desired.dtype, f"dtype {actual.dtype} != {desired.dtype}"
    np.testing.assert_allclose(to_numpy(actual), to_numpy(desired), rtol=rtol, atol=atol)


__all__ = ["assert_close", "device_name", "to_device", "to_numpy"]
