"""The instructors' worked solutions (instructors/solutions/, not handed out with the lessons).

One notebook per lesson, named like the lesson.  It first runs the lesson itself, then solves each
exercise the lesson poses, every solution ending with a cell that asserts the expected outcome.
The notebooks are executed here in the lessons' fast setting, so an expectation a lesson states
that does not hold fails CI.
"""

import json
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = ROOT / "instructors" / "solutions"


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def exercise_titles(lesson):
    """The numbered, titled exercises of a lesson: ``1. **Title.** ...`` under ``## Exercises``."""
    text = "\n".join("".join(c["source"]) for c in _cells(lesson) if c["cell_type"] == "markdown")
    exercises = text.split("## Exercises", 1)[1]
    return re.findall(r"^(\d+)\. \*\*([^*]+)\*\*", exercises, re.M)


def solution_sections(solutions):
    """{exercise number: the cells of its section} for the ``## Exercise N`` headings."""
    sections, current = {}, None
    for cell in _cells(solutions):
        heading = re.match(r"## Exercise (\d+)\b", "".join(cell["source"]))
        if cell["cell_type"] == "markdown" and heading:
            current = int(heading.group(1))
            sections[current] = []
        elif current is not None:
            sections[current].append(cell)
    return sections


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_every_lesson_has_its_solutions(lesson):
    solutions = SOLUTIONS / lesson.name
    assert solutions.is_file(), f"no worked solutions for {lesson.name} in instructors/solutions/"
    cells = _cells(solutions)
    for cell in cells:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                "committed with outputs"
            )
    first_code = next("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert f"%run ../../notebooks/{lesson.name}" in first_code, (
        "the solutions start from the lesson"
    )
    numbers = [int(n) for n, _ in exercise_titles(lesson)]
    sections = solution_sections(solutions)
    assert sorted(sections) == numbers, f"exercises {numbers}, solved {sorted(sections)}"
    for n, section in sections.items():
        code = [c for c in section if c["cell_type"] == "code"]
        assert code and "assert " in "".join(code[-1]["source"]), (
            f"exercise {n} ends without an assert"
        )


def test_exercise_titles_are_found():
    titles = exercise_titles(ROOT / "notebooks" / "01_backprop_is_a_penalty_method.ipynb")
    assert [n for n, _ in titles] == ["1", "2", "3"] and titles[2][1] == "Another nonlinearity."


@pytest.mark.slow
@pytest.mark.parametrize("solutions", sorted(SOLUTIONS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_solutions_run_and_their_assertions_hold(solutions, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PROXNP_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )
    nb = nbformat.read(solutions, as_version=4)
    nbclient.NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(solutions.parent)}},
    ).execute()
