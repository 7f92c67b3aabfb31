"""Sphinx configuration: MyST Markdown pages, the notebooks (rendered, not executed), autodoc."""
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parents[1]

project = "proxnp"
author = "proxnp developers"
copyright = "2026, proxnp developers"
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax", "sphinx.ext.viewcode"]
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_execution_mode = "off"          # notebooks are executed by the test suite, rendered here
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
suppress_warnings = ["myst.header"]

# The notebooks live in ../notebooks (one copy, executed in CI); Sphinx needs them in its source
# tree, so they are copied into _notebooks/ (ignored by git) at every build.
_dest = pathlib.Path(__file__).parent / "_notebooks"
shutil.rmtree(_dest, ignore_errors=True)
_dest.mkdir()
for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copy(nb, _dest / nb.name)
