"""Assignments: solutions score full marks, generated student versions score zero, nothing leaks."""
import json
import pathlib

import pytest

from proxnp.assignments import MARKERS, MarkerError, grade, graded_cells, main, make_student, strip_regions

ASSIGNMENTS = sorted((pathlib.Path(__file__).parents[1] / "notebooks" / "assignments").glob("*.ipynb"))


def region_lines(nb):
    """(inside, outside): non-trivial lines inside solution / hidden-test regions, and the rest."""
    lines, outside, inside = [], [], False
    for cell in nb["cells"]:
        for line in "".join(cell["source"]).splitlines():
            s = line.strip()
            if s in (MARKERS["SOLUTION"][0], MARKERS["HIDDEN TESTS"][0]):
                inside = True
            elif s in (MARKERS["SOLUTION"][1], MARKERS["HIDDEN TESTS"][1]):
                inside = False
            elif len(s) >= 8:
                (lines if inside else outside).append(s)
    return lines, outside


def test_three_assignments_with_nbgrader_metadata():
    assert [p.stem[:2] for p in ASSIGNMENTS] == ["01", "02", "03"]
    for path in ASSIGNMENTS:
        nb = json.loads(path.read_text())
        assert graded_cells(nb), path.name
        for cell in nb["cells"]:
            assert cell.get("outputs", []) == []
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and MARKERS["SOLUTION"][0] in src:
                assert cell["metadata"]["nbgrader"]["solution"] is True, path.name


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=lambda p: p.stem)
def test_solution_scores_full_marks(path):
    results = grade(path)
    assert results and all(q.earned == q.points > 0 for q in results), results


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=lambda p: p.stem)
def test_student_version_scores_zero_and_leaks_nothing(path, tmp_path):
    student = make_student(path, tmp_path / path.name)
    text = student.read_text()
    assert "raise NotImplementedError()" in text
    inside, outside = region_lines(json.loads(path.read_text()))
    student_lines = [s for c in json.loads(text)["cells"] for s in
                     (x.strip() for x in "".join(c["source"]).splitlines())]
    for line in set(inside):       # a line may survive only as often as it stands outside the regions
        assert student_lines.count(line) <= outside.count(line), f"solution text survived: {line!r}"
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
        assert marker not in text
    results = grade(student)
    assert results and all(q.earned == 0 for q in results), results
    assert all(q.error.startswith("NotImplementedError") for q in results), results


@pytest.mark.parametrize("source,message", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "without a matching"),
    ("### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS\n### END SOLUTION", "inside an open"),
    ("### BEGIN HIDDEN TESTS\n### END SOLUTION\n", "without a matching"),
])
def test_unbalanced_markers_are_refused(source, message):
    with pytest.raises(MarkerError, match=message):
        strip_regions(source)


def test_stub_keeps_indentation_and_hidden_tests_go():
    src = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\nassert 1\n" \
          "### BEGIN HIDDEN TESTS\nassert f() == 1\n### END HIDDEN TESTS"
    assert strip_regions(src) == "def f():\n    raise NotImplementedError()\nassert 1"


def test_cli_refuses_bad_notebook_and_overwrite(tmp_path, capsys):
    bad = tmp_path / "bad.ipynb"
    bad.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "### BEGIN SOLUTION\n",
                                          "metadata": {}, "outputs": []}], "metadata": {},
                               "nbformat": 4, "nbformat_minor": 5}))
    assert main(["make-student", str(bad), str(tmp_path / "out.ipynb")]) == 2
    assert "never closed" in capsys.readouterr().err
    assert not (tmp_path / "out.ipynb").exists()
    assert main(["make-student", str(ASSIGNMENTS[0]), str(ASSIGNMENTS[0])]) == 2
