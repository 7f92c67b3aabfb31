"""The lessons as committed: at least eight, without outputs, importing the installed proxnp.

They are executed (fast setting) by the documentation build in tests/test_docs.py, which fails on
any cell that raises and checks that every lesson page shows a figure and no error.
"""

import json
import pathlib
import re

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def _source(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return nb, "\n".join("".join(c["source"]) for c in nb["cells"])


def test_there_are_at_least_eight_lessons():
    assert len(NOTEBOOKS) >= 8, [p.name for p in NOTEBOOKS]
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)], numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped(path):
    nb, _ = _source(path)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_imports_proxnp_and_says_what_to_expect(path):
    _, source = _source(path)
    assert "import proxnp" in source and "sys.path" not in source
    assert "What you should see" in source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_draws_inline(path):
    # A non-interactive backend chosen in the notebook would keep every figure off the page.
    _, source = _source(path)
    assert not re.search(r"matplotlib\.use\(|%matplotlib\s+agg", source, re.IGNORECASE), path.name
