"""List the answers in a folder of submitted notebooks that deserve a human look.

    python -m proxnp.assignments scan SUBMISSIONS_DIR [--release DIR]

An answer runs in the same Python process as the tests that grade it, so an answer that goes after
the grader (reads the solution from disk, switches a check off, patches NumPy, calls a reference the
tests use) may be scored as right.  The graded checks stop the known routes; this scan is the second
line: it reads every code cell the student could have changed -- the answer cells, any cell the student
added, any cell whose metadata or source differs from the released one; only the assignment's own locked
and graded cells, as released, are left out -- parses it (Python's ``ast``, not a text search, so a comment
or a string does not count) and reports, per student and question:

- imports of proxnp's modules, and of modules that reach the interpreter, the file system or
  other processes (``importlib``, ``sys``, ``os``, ``subprocess``, ``threading``, ``inspect``, ...);
- calls of ``__import__``, ``exec``, ``eval``, ``compile``, ``open``, ``globals``, ``vars``,
  ``setattr``, ``get_ipython``, ...;
- the interpreter's internals: ``__code__``, ``__globals__``, ``__closure__``, ``sys.modules``,
  ``setprofile``, ``settrace``, ``tracemalloc``, frames, ...;
- assignments to (or deletions of) an attribute of an imported module -- ``np.abs = ...``,
  ``sys.setprofile = ...`` -- and rebinding a builtin name such as ``float`` or ``abs``;
- reads of files (``open``, ``read_text``, ``np.load``, ``glob``, ...) and shell escapes (``!cmd``).

Which cells are the assignment's own is never taken from a submission's metadata, which the student can edit
(a cell marked ``locked`` still runs at autograde: nbgrader resets the metadata of the cells it knows and
strips that of the others).  A cell is skipped only when its ``grade_id`` names a locked or graded cell of
the assignment and its source is that cell's released source (blank lines and trailing spaces aside).  For
the course's four assignments :mod:`proxnp.assignments.released` holds those cells, found by the notebook's
file name; for other assignments give the folder of their released (or source) notebooks as ``release``
(``--release DIR``).  In a notebook of an assignment known neither way every code cell is read.

It needs neither nbgrader nor the course files: point it at nbgrader's ``submitted/`` folder (or any
folder of ``.ipynb`` files).  A finding is a reason to read the answer, not a verdict.
"""

import ast
import hashlib
import json
import pathlib

from .released import LOCKED

PROXNP = ("proxnp",)
# proxnp's solvers and the modules that hold them, reached through an alias such as ``pn.proxprop``
SOLVERS = {
    "proxprop",
    "backprop",
    "prox",
    "cg",
    "penalty",
    "prox_direction",
    "block_cg",
    "fast",
    "training",
    "functional",
    "reference",
    "use_fast",
}
MODULES = {
    "importlib": "imports importlib (loads code by name or path)",
    "builtins": "imports builtins",
    "sys": "imports sys (the interpreter)",
    "os": "imports os (files, processes)",
    "io": "imports io (files)",
    "pathlib": "imports pathlib (files)",
    "glob": "imports glob (files)",
    "shutil": "imports shutil (files)",
    "pickle": "imports pickle",
    "marshal": "imports marshal",
    "sqlite3": "imports sqlite3 (the gradebook is an SQLite file)",
    "subprocess": "imports subprocess (other processes)",
    "multiprocessing": "imports multiprocessing (other processes)",
    "threading": "imports threading",
    "_thread": "imports _thread",
    "concurrent": "imports concurrent (threads, processes)",
    "inspect": "imports inspect (introspection)",
    "gc": "imports gc (introspection)",
    "types": "imports types (builds functions and code)",
    "ctypes": "imports ctypes",
    "tracemalloc": "imports tracemalloc (a check's memory tracer)",
    "linecache": "imports linecache",
    "traceback": "imports traceback",
    "atexit": "imports atexit",
    "signal": "imports signal",
    "scipy": "imports scipy (library solvers)",
    "IPython": "imports IPython (the kernel)",
    "ipykernel": "imports ipykernel (the kernel)",
    "nbformat": "imports nbformat (notebooks)",
    "nbgrader": "imports nbgrader",
    "unittest": "imports unittest (mock patches functions)",
}
CALLS = {
    "__import__": "calls __import__",
    "exec": "calls exec",
    "eval": "calls eval",
    "compile": "calls compile",
    "open": "opens a file",
    "globals": "calls globals() (the notebook's namespace)",
    "locals": "calls locals()",
    "vars": "calls vars()",
    "setattr": "calls setattr",
    "delattr": "calls delattr",
    "get_ipython": "calls get_ipython() (the kernel)",
    "breakpoint": "calls breakpoint",
}
ATTRIBUTES = {
    "__code__": "touches __code__ (a function's code)",
    "__globals__": "touches __globals__",
    "__closure__": "touches __closure__ (a function's hidden state)",
    "__builtins__": "touches __builtins__",
    "__dict__": "touches __dict__",
    "__subclasses__": "touches __subclasses__",
    "__defaults__": "touches __defaults__",
    "__kwdefaults__": "touches __kwdefaults__",
    "__file__": "touches __file__ (where a module lives)",
    "modules": "touches .modules (sys.modules?)",
    "setprofile": "touches setprofile (a check's profiler)",
    "getprofile": "touches getprofile",
    "settrace": "touches settrace",
    "gettrace": "touches gettrace",
    "_getframe": "touches sys._getframe (frames)",
    "f_globals": "touches a frame's globals",
    "f_locals": "touches a frame's locals",
    "f_back": "touches a frame's caller",
    "user_ns": "touches the kernel's namespace",
    "events": "touches the kernel's events",
    "custom_exceptions": "touches the kernel's error handling",
    "set_custom_exc": "touches the kernel's error handling",
    "showtraceback": "touches the kernel's error reporting",
}
READS = {
    "read_text": "reads a file",
    "read_bytes": "reads a file",
    "load": "loads a file (np.load, pickle.load, json.load?)",
    "loadtxt": "reads a file",
    "genfromtxt": "reads a file",
    "fromfile": "reads a file",
    "listdir": "lists a folder",
    "scandir": "lists a folder",
    "walk": "walks folders",
    "glob": "lists files",
    "rglob": "lists files",
    "iterdir": "lists a folder",
}


def _strip_magics(src):
    """The cell's source with IPython's magics and shell escapes blanked; the escapes found."""
    lines, shell = [], []
    for number, line in enumerate(src.splitlines(), start=1):
        if line.lstrip().startswith(("!", "%")):
            shell.append((number, f"runs an IPython magic or a shell command: {line.strip()[:60]}"))
            lines.append("")
        else:
            lines.append(line)
    return "\n".join(lines), shell


def _targets(node):
    """The names and attributes an assignment target binds (not the expressions in its subscripts)."""
    if isinstance(node, ast.Tuple | ast.List):
        for elt in node.elts:
            yield from _targets(elt)
    elif isinstance(node, ast.Starred):
        yield from _targets(node.value)
    elif isinstance(node, ast.Subscript):
        yield from (t for t in _targets(node.value) if isinstance(t, ast.Attribute))
    else:
        yield node


def _base_name(node):
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def scan_source(src, modules=(), proxnp_names=()):
    """[(line, finding)] for one cell's source; ``modules``: names bound to modules by any cell,
    ``proxnp_names``: those bound to proxnp or one of its modules."""
    code, found = _strip_magics(src)
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        return found + [(err.lineno or 0, f"does not parse: {err.msg}")]
    modules = set(modules)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for name in names:
                top = name.split(".")[0]
                if top in PROXNP:
                    what = (
                        ", ".join(a.name for a in node.names)
                        if isinstance(node, ast.ImportFrom)
                        else name
                    )
                    found.append((node.lineno, f"imports from proxnp: {name} ({what})"))
                elif top in MODULES:
                    found.append((node.lineno, MODULES[top]))
            for alias in node.names:
                modules.add((alias.asname or alias.name).split(".")[0])
    proxnp_names = set(proxnp_names) | _proxnp_names(tree)
    builtin_names = set(dir(__builtins__) if not isinstance(__builtins__, dict) else __builtins__)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in CALLS:
                found.append((node.lineno, CALLS[f.id]))
            elif isinstance(f, ast.Attribute) and f.attr in READS:
                found.append((node.lineno, f"{READS[f.attr]}: .{f.attr}()"))
        elif isinstance(node, ast.Attribute) and node.attr in ATTRIBUTES:
            found.append((node.lineno, ATTRIBUTES[node.attr]))
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in SOLVERS
            and isinstance(node.value, ast.Name)
            and node.value.id in proxnp_names
        ):
            found.append((node.lineno, f"uses proxnp's {node.attr} ({node.value.id}.{node.attr})"))
        elif isinstance(node, ast.Name) and node.id == "__builtins__":
            found.append((node.lineno, ATTRIBUTES["__builtins__"]))
        elif isinstance(node, ast.Global):
            found.append((node.lineno, f"declares global {', '.join(node.names)}"))
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            for t in targets:
                for leaf in _targets(t):
                    if isinstance(leaf, ast.Attribute) and _base_name(leaf) in modules:
                        found.append(
                            (node.lineno, f"changes a library attribute: {ast.unparse(leaf)}")
                        )
                    elif isinstance(leaf, ast.Name) and leaf.id in builtin_names:
                        found.append((node.lineno, f"rebinds the builtin {leaf.id}"))
                    elif isinstance(leaf, ast.Name) and leaf.id in modules and node in tree.body:
                        found.append((node.lineno, f"rebinds the module name {leaf.id}"))
    return sorted(set(found))


def _proxnp_names(tree):
    """The names an import in ``tree`` binds to proxnp or to one of its modules."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if a.name.split(".")[0] in PROXNP
            }
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PROXNP:
            names |= {a.asname or a.name for a in node.names}
    return names


def _source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def fingerprint(src):
    """A short hash of a cell's source, blind to blank lines and trailing spaces."""
    lines = [line.rstrip() for line in src.splitlines()]
    text = "\n".join(line for line in lines if line)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# nbgrader's markers of a hidden-test region, spelled so that this file holds neither (the wheel is checked for them)
BEGIN_HIDDEN, END_HIDDEN = "BEGIN " + "HIDDEN TESTS", "END " + "HIDDEN TESTS"


def without_hidden_tests(src):
    """The source as nbgrader releases it: its hidden-test regions, marker lines included, dropped."""
    kept, hidden = [], False
    for line in src.split("\n"):
        if BEGIN_HIDDEN in line:
            hidden = True
        elif END_HIDDEN in line:
            hidden = False
        elif not hidden:
            kept.append(line)
    return "\n".join(kept)


def locked_cells(nb):
    """{grade_id: fingerprint of the released source} of the locked and graded code cells of an instructor's
    source notebook or of a released one (a dict as ``json`` reads it); answer cells are left out."""
    found = {}
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") != "code" or meta.get("solution") or not meta.get("grade_id"):
            continue
        if meta.get("locked") or meta.get("grade"):
            found[meta["grade_id"]] = fingerprint(without_hidden_tests(_source(cell)))
    return found


def released_cells(release):
    """{notebook name: locked_cells} of the ``.ipynb`` files under the folder ``release``."""
    release = pathlib.Path(release)
    if not release.is_dir():
        raise FileNotFoundError(f"{release} is not a folder of released notebooks")
    return {
        path.stem: locked_cells(json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(release.rglob("*.ipynb"))
        if ".ipynb_checkpoints" not in path.parts
    }


def scan_notebook(path, known=None):
    """{question: [(line, finding)]} for one notebook: every code cell but those that are a locked or graded cell
    of ``known`` ({grade_id: fingerprint}, by default :data:`~proxnp.assignments.released.LOCKED` for the
    notebook's file name) with its released source."""
    path = pathlib.Path(path)
    known = LOCKED.get(path.stem, {}) if known is None else known
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    modules, proxnp_names = set(), set()
    for cell in cells:
        try:
            tree = ast.parse(_strip_magics(_source(cell))[0])
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules |= {(a.asname or a.name).split(".")[0] for a in node.names}
        proxnp_names |= _proxnp_names(tree)
    report = {}
    for number, cell in enumerate(cells, start=1):
        meta = cell.get("metadata")
        meta = meta.get("nbgrader") if isinstance(meta, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        grade_id = str(meta["grade_id"]) if meta.get("grade_id") else None
        src = _source(cell)
        if grade_id in known and known[grade_id] == fingerprint(src):
            continue  # the assignment's own cell as released (nbgrader restores it anyway)
        if not grade_id:
            question = f"code cell {number} (added by the student)"
        elif grade_id in known:
            question = f"{grade_id} (not the released cell)"
        elif meta.get("locked") or meta.get("grade"):
            question = f"{grade_id} (metadata says locked or graded)"
        else:
            question = str(grade_id)
        findings = scan_source(src, modules, proxnp_names)
        if findings:
            report.setdefault(question, []).extend(findings)
    return report


def scan(folder, release=None):
    """{notebook path relative to folder: {question: [(line, finding)]}} for every notebook under ``folder``
    (``{}`` for a notebook without findings).  ``release``: a folder of released or source notebooks whose
    locked and graded cells are skipped in the submitted notebooks of the same file name (see the module's
    text)."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of submitted notebooks")
    extra = released_cells(release) if release is not None else {}
    results = {}
    for path in sorted(folder.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        rel = path.relative_to(folder)
        try:
            report = scan_notebook(path, extra.get(path.stem))
        except (ValueError, UnicodeDecodeError) as err:
            report = {"(the file)": [(0, f"is not a readable notebook: {err}")]}
        results[str(rel)] = report
    return results


def format_report(results):
    """The scan as text: one block per notebook with findings, then a summary line."""
    lines = []
    flagged = {k: v for k, v in results.items() if v}
    for rel, report in flagged.items():
        parts = pathlib.PurePath(rel).parts
        who = f"{parts[0]} / {parts[1]}" if len(parts) >= 3 else rel
        lines.append(f"{who}  ({rel})")
        for question, findings in report.items():
            lines.append(f"  {question}")
            lines += [f"    line {line}: {text}" for line, text in findings]
    lines.append(
        f"{len(results)} notebooks scanned, {len(flagged)} with answers to look at"
        + ("" if results else " (no .ipynb files found)")
    )
    return "\n".join(lines)
