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


THEORY = pathlib.Path(__file__).parents[1] / "docs" / "theory.md"
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`\n]*`", re.S)
_EQ_REF = re.compile(r"\beqs?\.\s*\(?(\d+(?:\)?\s*(?:[–,-]|and)\s*\(?\d+)*)")
_BARE = re.compile(r"(?<![\w$])\((\d{1,2})\)")


def equation_table():
    """The labels of the equation table on the theory page: {number: description}."""
    text = (
        THEORY.read_text(encoding="utf-8").split("## Equation numbers", 1)[1].split("\n## ", 1)[0]
    )
    return {int(n): what for n, what in re.findall(r"^\| \((\d+)\) \| ([^|]+) \|", text, re.M)}


def equation_labels(text):
    """Every equation number a piece of prose cites: "eq. 3", "eqs. 8–10", "(11)".

    Mathematics and inline code are skipped, except the words of ``\\text{...}`` in a formula.
    """
    words = " ".join(re.findall(r"\\text\{([^}]*)\}", text))
    text = _MATH.sub(" ", text) + " " + words
    labels = set()
    for group in _EQ_REF.findall(text):
        numbers = [int(n) for n in re.findall(r"\d+", group)]
        labels.update(numbers)
        if "–" in group and len(numbers) == 2:  # a range
            labels.update(range(numbers[0], numbers[1] + 1))
    return labels | {int(n) for n in _BARE.findall(text)}


def lesson_labels(path):
    nb, _ = _source(path)
    labels = set()
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "code":  # only the comments cite equations
            text = "\n".join(re.findall(r"#(.*)", text))
        labels |= equation_labels(text)
    return labels


def test_equation_table_has_the_papers_fourteen_numbers():
    table = equation_table()
    assert sorted(table) == list(range(1, 15)), sorted(table)
    assert "proximal" in table[11] and "penalty energy" in table[3] and "forward pass" in table[7]
    assert "preconditioned system" in table[14] and "metric" in table[13]


def test_label_extraction_sees_every_way_a_lesson_cites_an_equation():
    text = "the energy (eq. 3), steps (eqs. 8–10), the prox step (11), $\\|x\\|^2 (4)$ and `f(5)`"
    assert equation_labels(text) == {3, 8, 9, 10, 11}
    assert equation_labels("$$Md = g \\quad\\text{(eq. 14)}, \\qquad x(2)$$") == {14}
    assert equation_labels("| (12), (8) | last layer |") == {8, 12}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lesson_cites_only_equations_in_the_table(path):
    unknown = lesson_labels(path) - set(equation_table())
    assert not unknown, (
        f"{path.name} cites equations missing from docs/theory.md's table: {sorted(unknown)}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lesson_opens_with_objectives_prerequisites_and_times_and_closes_with_exercises(path):
    nb, _ = _source(path)
    opening = "".join(nb["cells"][0]["source"])
    assert "**Learning objectives.**" in opening and "**Prerequisites:**" in opening, path.name
    time_line = re.search(r"^\*\*Time:\*\*(.*)$", opening, re.M)
    assert time_line, f"{path.name}: no time line"
    line = time_line.group(1)
    assert re.search(r"\d+(\.\d+)? h to study", line), line
    # the run times: full and fast, measured, with the machine and the date
    assert re.search(r"full lesson \d+(\.\d+)? (s|min)\b", line), line
    assert re.search(r"fast setting \d+(\.\d+)? (s|min)\b", line), line
    assert re.search(r"measured on .*core.*\d{4}-\d\d-\d\d", line), line
    assert "## Exercises" in "".join(nb["cells"][-1]["source"]), (
        f"{path.name}: does not close with its exercises"
    )
