"""Scan submitted notebooks, and try the course assignments with nbgrader in one command.

    python -m proxnp.assignments scan SUBMISSIONS_DIR [--release DIR]
    python -m proxnp.assignments feedback-zip COURSE_DIR ASSIGNMENT OUT.zip
    python -m proxnp.assignments list [--sources DIR]
    python -m proxnp.assignments try [ASSIGNMENT ...] [--sources DIR] [--submission NOTEBOOK] [--keep DIR]

``scan`` (:mod:`proxnp.assignments.scan`) works on any folder of submitted notebooks and needs no
course files.  ``feedback-zip`` packs the HTML feedback that ``nbgrader generate_feedback`` wrote as
``<student>__<file>.html`` for an upload to a learning platform (nbgrader's ``release_feedback`` works
with its exchange only).  ``list`` and ``try`` need the instructor's *source* notebooks, which are not part of
the installed package: they live in ``notebooks/assignments/`` of a checkout of the repository
(the default ``--sources``, relative to the current folder) or wherever ``--sources`` points.
nbgrader is the grading engine: this module only drives it.  ``try`` builds a throw-away nbgrader course
directory (or ``--keep DIR``), copies the source notebook in, runs ``nbgrader
generate_assignment``, submits the instructor's solution and the untouched student version
(or the notebook given with ``--submission``), runs ``nbgrader autograde`` and prints nbgrader's
score for every graded cell.  Markers, hidden tests, locked cells and scores are nbgrader's own;
autograding restores every locked or graded cell -- edited or deleted -- from nbgrader's
gradebook (``OverwriteCells.add_missing_cells``), so the returned file decides nothing but its
answers.  With ``--keep`` it also runs ``nbgrader generate_feedback`` and leaves the course
directory (release/, autograded/, feedback/, gradebook.db) for a look.

A submitted notebook is code: grade untrusted work in a sandbox.  nbgrader comes with the
``course`` extra: ``pip install -e ".[course]"``.
"""

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

SOURCES = pathlib.Path("notebooks") / "assignments"  # in a checkout, relative to its root
INSTALL_HINT = 'proxnp.assignments needs nbgrader: pip install -e ".[course]"'

CONFIG = """\
c = get_config()
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = "proxnp"
c.OverwriteCells.add_missing_cells = True      # a deleted test cell is put back and run
c.Autograde.sanitize_preprocessors = [         # a renamed test cell is graded as missing, not a crash
    "nbgrader.preprocessors.ClearOutput", "nbgrader.preprocessors.DeduplicateIds",
    "nbgrader.preprocessors.OverwriteKernelspec", "proxnp.assignments.nbgrader_plugins.DropUnknownCells",
    "nbgrader.preprocessors.OverwriteCells", "nbgrader.preprocessors.CheckCellMetadata"]
c.ExecutePreprocessor.timeout = 600
# feedback shows the scores and the failures, never the hidden tests
c.GenerateFeedback.preprocessors = ["nbgrader.preprocessors.GetGrades", "nbgrader.preprocessors.ClearHiddenTests",
                                    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor"]
"""


def available(sources=SOURCES):
    """The source notebooks in the folder ``sources``, sorted by name; one clear error if there are none."""
    found = sorted(pathlib.Path(sources).glob("*.ipynb"))
    if not found:
        raise FileNotFoundError(
            f"no assignment sources in {sources}: run this from a checkout of the repository "
            "or give --sources DIR (the installed package holds no assignments)"
        )
    return found


def resolve(spec, sources=SOURCES):
    """An assignment from a path, a name, or a name prefix such as '03'."""
    path = pathlib.Path(spec)
    if path.suffix == ".ipynb" and path.is_file():
        return path.resolve()
    matches = [p for p in available(sources) if p.stem.startswith(spec)]
    if len(matches) != 1:
        names = ", ".join(p.stem for p in available(sources))
        raise ValueError(
            f"{spec!r} names {'no' if not matches else 'more than one'} assignment; "
            f"give a path or one of: {names}"
        )
    return matches[0]


def nbgrader(root, *args):
    """Run one nbgrader command in the course directory; raise with its output on failure."""
    run = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=root, capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(
            f"nbgrader {' '.join(args)} failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        )


def grade(source, root, submissions):
    """Generate ``source``'s assignment in the course at ``root``, autograde ``submissions``.

    ``submissions`` maps a student id to a notebook path, or to None for the untouched
    release.  Returns {student: [(grade_id, score, max_score), ...]} from nbgrader's gradebook.
    """
    from nbgrader.api import Gradebook

    name = source.stem
    root.mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(CONFIG.format(root=str(root)))
    (root / "source" / name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, root / "source" / name / source.name)
    nbgrader(root, "generate_assignment", name, "--force")
    for student, path in submissions.items():
        dest = root / "submitted" / student / name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path or root / "release" / name / source.name, dest / source.name)
    nbgrader(root, "autograde", name, "--force")
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        return {
            s: [
                (g.name, g.score, g.max_score)
                for g in gb.find_submission_notebook(name, name, s).grades
            ]
            for s in submissions
        }


def report(name, scores):
    """One line per student: the total and every graded cell's score."""
    lines = [name]
    for student, grades in scores.items():
        total, top = sum(g[1] for g in grades), sum(g[2] for g in grades)
        cells = ", ".join(f"{gid} {score:g}/{most:g}" for gid, score, most in grades)
        lines.append(f"  {student:<12} {total:g} / {top:g}   ({cells})")
    return "\n".join(lines)


def try_assignments(specs, submission=None, keep=None, sources=SOURCES):
    """Grade the solution and the untouched release (or ``submission``) of each assignment; print the scores."""
    notebooks = [resolve(s, sources) for s in specs] if specs else available(sources)
    if submission is not None and len(notebooks) != 1:
        raise ValueError("--submission needs exactly one assignment")
    with tempfile.TemporaryDirectory(prefix="proxnp-course-") as tmp:
        base = pathlib.Path(keep) if keep else pathlib.Path(tmp)
        for source in notebooks:
            root = base / source.stem if len(notebooks) > 1 else base
            subs = (
                {"student": pathlib.Path(submission).resolve()}
                if submission
                else {"solution": source, "release": None}
            )
            print(report(source.stem, grade(source, root, subs)), flush=True)
            if keep:
                nbgrader(root, "generate_feedback", source.stem, "--force")
                print(f"  course directory: {root}")


def feedback_zip(course, assignment, out):
    """Pack ``course/feedback/<student>/<assignment>/*.html`` into the zip ``out``.

    Each file is stored as ``<student>__<file>.html``, the name a learning platform's bulk
    upload matches to the student.
    """
    import zipfile

    files = sorted((pathlib.Path(course) / "feedback").glob(f"*/{assignment}/*.html"))
    if not files:
        raise FileNotFoundError(
            f"no feedback for {assignment!r} in {pathlib.Path(course) / 'feedback'}: "
            "run nbgrader generate_feedback first"
        )
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path in files:
            z.write(path, f"{path.parts[-3]}__{path.name}")
    return len(files)


def main(argv=None):
    """The command line; returns the exit status (2 on a bad argument or without nbgrader)."""
    parser = argparse.ArgumentParser(
        prog="python -m proxnp.assignments", description="Try the assignments with nbgrader."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_scan = sub.add_parser("scan", help="list the answers in submitted notebooks that need a look")
    p_scan.add_argument("folder", help="a folder of submitted notebooks (nbgrader's submitted/)")
    p_scan.add_argument(
        "--release",
        metavar="DIR",
        help="the released (or source) notebooks of an assignment not in the course: their locked and "
        "graded cells, unchanged, are skipped",
    )
    p_zip = sub.add_parser("feedback-zip", help="pack the HTML feedback for a learning platform")
    p_zip.add_argument("course", help="the course directory (holds feedback/)")
    p_zip.add_argument("assignment", help="the assignment's name")
    p_zip.add_argument("out", help="the zip file to write")
    p_list = sub.add_parser("list", help="list the assignments")
    p_try = sub.add_parser("try", help="generate, submit and autograde with nbgrader")
    for p in (p_list, p_try):
        p.add_argument(
            "--sources",
            default=str(SOURCES),
            metavar="DIR",
            help="the folder of source notebooks (default: notebooks/assignments of a checkout)",
        )
    p_try.add_argument(
        "assignments", nargs="*", help="names, prefixes ('03') or paths; default: all"
    )
    p_try.add_argument(
        "--submission", help="grade this notebook instead of the solution and the release"
    )
    p_try.add_argument(
        "--keep", metavar="DIR", help="keep the course directory here (and write feedback)"
    )
    args = parser.parse_args(argv)
    if args.command == "scan":
        from .scan import format_report, scan

        try:
            print(format_report(scan(args.folder, args.release)))
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "feedback-zip":
        try:
            n = feedback_zip(args.course, args.assignment, args.out)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{n} feedback files in {args.out}")
        return 0
    if args.command == "list":
        try:
            names = [path.stem for path in available(args.sources)]
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print("\n".join(names))
        return 0
    try:
        import nbgrader  # noqa: F401
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    try:
        try_assignments(args.assignments, args.submission, args.keep, args.sources)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
