"""Sphinx configuration: MyST pages, the lessons executed at build time, autodoc, offline math."""

import os
import pathlib
import pkgutil
import re
import shutil

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The lessons run in their fast setting unless the builder asks for the full one
# (PROXNP_NOTEBOOK_FAST=0). Figures must reach the page: a kernel started with MPLBACKEND=Agg
# would draw nothing inline, so that setting is dropped for the kernels started here.
os.environ.setdefault("PROXNP_NOTEBOOK_FAST", "1")
if os.environ.get("MPLBACKEND", "").lower() == "agg":
    del os.environ["MPLBACKEND"]

project = "proxnp"
author = "proxnp developers"
copyright = "2026, proxnp developers"
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx-mathjax-offline",  # MathJax 3 from the installed package into _static/: no CDN
]
myst_enable_extensions = ["dollarmath", "amsmath"]
exclude_patterns = ["_build", "_generated"]
suppress_warnings = ["myst.header"]

# Every lesson is executed when the docs are built, so each page shows its numbers and figures;
# a cell that raises fails the build (the CI build is the one place the notebooks run).
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 600  # seconds per cell
nb_ipywidgets_js = {}  # never load widget scripts from a CDN
nb_merge_streams = True  # consecutive prints of a cell in one output block

html_theme = "sphinx_book_theme"
html_title = "proxnp"
html_static_path = ["_static"]
html_css_files = ["proxnp.css"]
# One search field: the header's (a field on a wide screen, an icon on a phone); the theme's
# default sidebar would add a second one.
html_sidebars = {"**": ["navbar-logo.html", "icon-links.html", "sbt-sidebar-nav.html"]}
html_theme_options = {
    "use_download_button": True,  # each lesson page offers its .ipynb
    "use_fullscreen_button": False,
    "show_toc_level": 2,
    "home_page_in_toc": True,
    # A lesson page gives its whole width to code and figures (its sections are in the left menu's order).
    "secondary_sidebar_items": {"[!_]*": ["page-toc.html"], "_notebooks/*": []},
}

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
# Signatures show the type aliases by name (Array: numpy.ndarray or cupy.ndarray), not expanded.
autodoc_type_aliases = {"Array": "proxnp.backend.Array", "DTypeLike": "numpy.typing.DTypeLike"}

# The notebooks live in ../notebooks (one copy); Sphinx needs them in its source tree, so they are
# copied into _notebooks/ (ignored by git). copy2 keeps the modification time, so an unchanged
# lesson is not re-read (and not re-executed) by an incremental build.
_dest = pathlib.Path(__file__).parent / "_notebooks"
_dest.mkdir(exist_ok=True)
_lessons = {nb.name: nb for nb in (ROOT / "notebooks").glob("*.ipynb")}
for old in _dest.iterdir():
    if old.name not in _lessons:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
for name, nb in _lessons.items():
    target = _dest / name
    if not target.exists() or target.read_bytes() != nb.read_bytes():
        shutil.copy2(nb, target)


def _draw_penalty_chain(path):
    """The theory page's figure: lesson 1's tanh network drawn as the penalty chain of eq. (3).

    Drawn at every build (never committed) by the same function lesson 1 calls.
    """
    import numpy as np

    import proxnp as pn
    from proxnp.training.plots import penalty_chain_figure, save_figure

    r = np.random.default_rng(0)
    model = pn.Sequential(
        pn.Linear(7, 6, rng=r),
        pn.Tanh(),
        pn.Linear(6, 5, rng=r),
        pn.Tanh(),
        pn.Linear(5, 4, rng=r),
        pn.Tanh(),
        pn.Linear(4, 3, rng=r),
    )
    path.parent.mkdir(exist_ok=True)
    save_figure(penalty_chain_figure(model), path)


_draw_penalty_chain(pathlib.Path(__file__).parent / "_generated" / "penalty_chain.png")


def _literal_examples(app, what, name, obj, options, lines):
    """Show indented example blocks of docstrings as code.

    A docstring example such as ``loss = backprop(model, loss_fn, x, y)`` indented under a plain
    paragraph is a block quote in reStructuredText, whose lines run together into one paragraph.
    An indented block that follows a blank line and a paragraph not ending in ``::`` becomes a
    literal block.
    """
    out, paragraph = [], None
    for i, line in enumerate(lines):
        indented = line.startswith("    ") and line.strip()
        if (
            indented
            and i > 0
            and not lines[i - 1].strip()
            and paragraph is not None
            and not paragraph.rstrip().endswith("::")
        ):
            out += ["::", ""]
            paragraph = "::"
        out.append(line)
        if line.strip() and not line.startswith(" "):
            paragraph = line
    lines[:] = out


def _modules_not_on_page(source):
    import proxnp

    names = [
        m.name
        for m in pkgutil.walk_packages(proxnp.__path__, "proxnp.")
        if not m.name.endswith("__main__")
    ]
    return [n for n in sorted(names) if not re.search(rf"automodule:: {re.escape(n)}\s", source)]


def _complete_api_page(app, docname, source):
    """Append to the API page every proxnp module it does not name, so none is left out."""
    if docname != "api":
        return
    missing = _modules_not_on_page(source[0])
    if missing:
        source[0] += (
            "\n## Other modules\n\n```{eval-rst}\n"
            + "".join(f".. automodule:: {n}\n" for n in missing)
            + "```\n"
        )


def setup(app):
    app.connect("autodoc-process-docstring", _literal_examples)
    app.connect("source-read", _complete_api_page)
