"""The CuPy branches, run on the CPU through a NumPy-backed double of CuPy (tests/cupy_double/).

CI has no GPU, so the `gpu` tests skip there.  Here they run in a subprocess whose
``import cupy`` finds the double: every non-NumPy branch of proxnp executes, no CuPy array
may reach NumPy implicitly (the double's arrays refuse ``numpy.asarray``, as CuPy's do) and
no NumPy array may enter a device computation.  CUDA itself is not tested here: that is
``bench/gpu_check.sh`` on a real GPU.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
DOUBLE = ROOT / "tests" / "cupy_double"


def pythonpath_with_double():
    """PYTHONPATH with the double first, so that a child process's ``import cupy`` finds it."""
    return os.pathsep.join(p for p in (str(DOUBLE), os.environ.get("PYTHONPATH")) if p)


def run_gpu_tests():
    env = dict(os.environ, PYTHONPATH=pythonpath_with_double())
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_every_gpu_test_passes_on_the_cupy_double():
    result = run_gpu_tests()
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 20, summary
    assert "skipped" not in summary and "failed" not in summary, summary


def _cupy_modules():
    return {
        m: sys.modules[m]
        for m in list(sys.modules)
        if m in ("cupy", "cupyx") or m.startswith(("cupy.", "cupyx."))
    }


def test_the_double_refuses_what_cupy_refuses():
    import numpy as np

    saved = _cupy_modules()  # a real CuPy, if this process has one
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(DOUBLE))
    try:
        import cupy

        a = cupy.asarray(np.arange(3.0))
        assert type(a).__module__ == "cupy" and not isinstance(a, np.ndarray)
        with pytest.raises(TypeError, match="Implicit conversion"):
            np.asarray(a)
        with pytest.raises(TypeError, match="NumPy array was passed"):
            a + np.ones(3)
        with pytest.raises(TypeError, match="NumPy array was passed"):
            cupy.concatenate([a, np.ones(3)])
        np.testing.assert_array_equal((a * 2 + 1).get(), [1.0, 3.0, 5.0])
        assert float(a.sum()) == 3.0 and type(a.sum()) is cupy.ndarray  # 0-d, as in CuPy
    finally:
        sys.path.remove(str(DOUBLE))
        for name in _cupy_modules():
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.mark.slow
def test_gpu_notebook_takes_its_gpu_branch_on_the_double(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PYTHONPATH", pythonpath_with_double())
    monkeypatch.setenv("PROXNP_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = ROOT / "notebooks" / "06_same_code_on_a_gpu.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "GPU usable: True" in printed and "weights are cupy arrays" in printed, printed
