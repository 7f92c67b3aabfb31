"""The documentation builds with Sphinx, warnings as errors."""
import pathlib
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).parents[1] / "docs"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                        str(DOCS), str(tmp_path / "html")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    html = (tmp_path / "html" / "theory.html").read_text()
    assert "Proposition 1" in html and "math" in html
    assert (tmp_path / "html" / "_notebooks" / "01_backprop_is_a_penalty_method.html").exists()
    assert "proxnp.prox.prox_direction" in (tmp_path / "html" / "api.html").read_text()
