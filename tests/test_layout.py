"""The package's plan: the paper's modules flat on top, everything else in named subpackages.

The reading-path modules may reach a subpackage only through ``proxnp.fast`` (the fast kernels
behind the one predicate ``use_fast``); the plan is stated once, the same way, in the package
docstring and the README.
"""

import ast
import pathlib
import re

import proxnp

PACKAGE = pathlib.Path(proxnp.__file__).parent
README = PACKAGE.parent / "README.md"
SUBPACKAGES = {"fast", "training", "cli", "assignments"}


def _reading_path():
    return re.search(r"\n\s*(functional ->[^\n]*)", proxnp.__doc__).group(1).split(" -> ")


def _imported_modules(path):
    """Every proxnp module a file imports, as a dotted name relative to the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module or ""
                names = [base] if base else [a.name for a in node.names]
                yield from names
            elif (node.module or "").startswith("proxnp"):
                yield node.module.removeprefix("proxnp").lstrip(".")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("proxnp."):
                    yield a.name.removeprefix("proxnp.")


def test_top_level_holds_the_paper_modules_and_named_subpackages():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules == set(_reading_path()) | {"gradcheck", "backend", "lessons"}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == SUBPACKAGES


def test_reading_path_reaches_subpackages_only_through_fast():
    for name in [*_reading_path(), "gradcheck", "backend", "lessons"]:
        for imported in _imported_modules(PACKAGE / f"{name}.py"):
            top = imported.split(".")[0]
            assert top not in SUBPACKAGES - {"fast"}, f"{name}.py imports proxnp.{imported}"


def test_readme_states_the_same_reading_order():
    text = README.read_text(encoding="utf-8")
    table = re.findall(r"^\| `(\w+)\.py` \|", text, flags=re.M)
    assert table == _reading_path()
    for sub in SUBPACKAGES:
        assert f"`proxnp/{sub}/`" in text
