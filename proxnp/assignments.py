"""Course assignments: make student versions of solution notebooks, and grade notebooks.

    python -m proxnp.assignments make-student SRC.ipynb DEST.ipynb
    python -m proxnp.assignments grade NOTEBOOK.ipynb

Solution notebooks use nbgrader's markers and cell metadata, so a course already on
nbgrader can adopt them as they are:

* ``### BEGIN SOLUTION`` / ``### END SOLUTION`` -- replaced in the student version by
  ``raise NotImplementedError()`` at the marker's indentation;
* ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` -- removed;
* graded cells carry ``metadata.nbgrader = {"grade": true, "grade_id": ..., "points": ...}``.

:func:`make_student` refuses unbalanced or nested markers and clears every output.
:func:`grade` executes a notebook (solution or student) cell by cell, continuing after
errors, and gives each graded cell its points if it ran without error, else 0.
"""
import argparse
import copy
import json
import pathlib
import sys
from typing import NamedTuple

MARKERS = {"SOLUTION": ("### BEGIN SOLUTION", "### END SOLUTION"),
           "HIDDEN TESTS": ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")}
STUB = "raise NotImplementedError()"


class MarkerError(ValueError):
    """Unbalanced or nested solution / hidden-test markers."""


def _source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_regions(source, where="cell"):
    """Replace solution regions by a stub and drop hidden-test regions; check the markers."""
    out, open_kind, indent = [], None, ""
    for n, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        kind = next((k for k, (b, e) in MARKERS.items() if stripped in (b, e)), None)
        if kind is None:
            if open_kind is None:
                out.append(line)
            continue
        begins = stripped == MARKERS[kind][0]
        if begins:
            if open_kind is not None:
                raise MarkerError(f"{where}, line {n}: {stripped!r} inside an open "
                                  f"{MARKERS[open_kind][0]!r}")
            open_kind, indent = kind, line[: len(line) - len(line.lstrip())]
        else:
            if open_kind != kind:
                raise MarkerError(f"{where}, line {n}: {stripped!r} without a matching "
                                  f"{MARKERS[kind][0]!r}")
            if kind == "SOLUTION":
                out.append(indent + STUB)
            open_kind = None
    if open_kind is not None:
        raise MarkerError(f"{where}: {MARKERS[open_kind][0]!r} is never closed")
    return "\n".join(out)


def make_student(src, dest):
    """Write the student version of the solution notebook ``src`` to ``dest``."""
    nb = json.loads(pathlib.Path(src).read_text())
    student = copy.deepcopy(nb)
    for i, cell in enumerate(student["cells"]):
        text = strip_regions(_source(cell), where=f"{src}: cell {i}")
        cell["source"] = text
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(student, indent=1, ensure_ascii=False) + "\n")
    return dest


class Question(NamedTuple):
    grade_id: str
    points: float
    earned: float
    error: str        # "" when the cell ran cleanly, else the exception name and message


def graded_cells(nb):
    """(index, grade_id, points) of every graded cell."""
    out = []
    for i, cell in enumerate(nb["cells"]):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade"):
            out.append((i, meta["grade_id"], float(meta.get("points", 0))))
    return out


def grade(path, timeout=600, env_fast=True):
    """Execute ``path`` and return one :class:`Question` per graded cell."""
    import os

    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    old = os.environ.get("PROXNP_NOTEBOOK_FAST")
    if env_fast:
        os.environ["PROXNP_NOTEBOOK_FAST"] = "1"
    try:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         allow_errors=True,
                                         resources={"metadata": {"path": str(pathlib.Path(path).parent)}})
        client.execute()
    finally:
        if env_fast:
            if old is None:
                os.environ.pop("PROXNP_NOTEBOOK_FAST", None)
            else:
                os.environ["PROXNP_NOTEBOOK_FAST"] = old
    results = []
    for i, grade_id, points in graded_cells(nb):
        errors = [o for o in nb.cells[i].get("outputs", []) if o.get("output_type") == "error"]
        error = f"{errors[0]['ename']}: {errors[0]['evalue']}" if errors else ""
        results.append(Question(grade_id, points, 0.0 if errors else points, error))
    return results


def report(results):
    lines = [f"{'question':<28}{'points':>8}  result"]
    for q in results:
        lines.append(f"{q.grade_id:<28}{q.earned:>4g}/{q.points:<3g}  {q.error or 'ok'}")
    total, possible = sum(q.earned for q in results), sum(q.points for q in results)
    lines.append(f"{'total':<28}{total:>4g}/{possible:<3g}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m proxnp.assignments", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make-student", help="write the student version of a solution notebook")
    m.add_argument("src")
    m.add_argument("dest")
    g = sub.add_parser("grade", help="execute a notebook and report per-question points")
    g.add_argument("notebook")
    args = p.parse_args(argv)
    try:
        if args.command == "make-student":
            if pathlib.Path(args.dest).resolve() == pathlib.Path(args.src).resolve():
                raise MarkerError("refusing to overwrite the solution notebook with its student version")
            print(f"wrote {make_student(args.src, args.dest)}")
            return 0
        print(report(grade(args.notebook)))
        return 0
    except (MarkerError, OSError, json.JSONDecodeError, KeyError) as exc:
        print(f"proxnp.assignments: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
