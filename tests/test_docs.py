"""The documentation builds with warnings as errors, executing every lesson on the way.

This build is where CI runs the notebooks: myst-nb executes each one (fast setting) and a cell that
raises fails the build. The checks below read the built pages: every lesson page shows its figures
and no error, every script and stylesheet is local (math renders offline), the API page opens
with what users call.
"""

import html.parser
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import time

import pytest

import proxnp

DOCS = pathlib.Path(__file__).parents[1] / "docs"
SUBPACKAGES = ("fast", "training", "cli", "assignments")
NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


class _Page(html.parser.HTMLParser):
    """The resources a page loads, its images inside cell outputs, and its error outputs."""

    def __init__(self):
        super().__init__()
        self.scripts, self.links, self.output_images, self.tracebacks, self.blockquotes = (
            [],
            [],
            [],
            0,
            0,
        )
        self._divs = []  # for each open <div>: does it open a cell output?

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div":
            self._divs.append("cell_output" in classes)
            if "traceback" in classes:
                self.tracebacks += 1
        elif tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        elif tag == "link" and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "img" and any(self._divs):
            self.output_images.append(attrs.get("src", ""))
        elif tag == "blockquote":
            self.blockquotes += 1

    def handle_endtag(self, tag):
        if tag == "div" and self._divs:
            self._divs.pop()


def _parse(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _is_remote(url):
    return bool(re.match(r"^([a-z][a-z0-9+.-]*:)?//", url, re.IGNORECASE))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the docs once for this module; returns the HTML folder."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    out = tmp_path_factory.mktemp("docs")
    start = time.perf_counter()
    env = dict(os.environ, PROXNP_NOTEBOOK_FAST="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            str(DOCS),
            str(out / "html"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - start
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-20000:]
    executed = [float(s) for s in re.findall(r"Executed notebook in ([0-9.]+) seconds", log)]
    print(
        f"\ndocs build: {seconds:.1f} s, of which {len(executed)} notebooks executed in "
        f"{sum(executed):.1f} s"
    )
    return out / "html"


@pytest.mark.slow
def test_docs_build_executes_every_lesson(site):
    assert (site / "index.html").exists()
    for nb in NOTEBOOKS:
        assert (site / "_notebooks" / f"{nb.stem}.html").exists(), nb.name


@pytest.mark.slow
def test_theory_page_has_its_math(site):
    page = (site / "theory.html").read_text(encoding="utf-8")
    assert "Proposition 1" in page
    assert page.count('class="math') >= 10


@pytest.mark.slow
def test_no_script_or_stylesheet_comes_from_the_network(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 10
    remote = {}
    for path in pages:
        page = _parse(path)
        urls = [u for u in page.scripts + page.links if _is_remote(u)]
        if urls:
            remote[str(path.relative_to(site))] = urls
    assert remote == {}


@pytest.mark.slow
def test_mathjax_is_served_from_the_site(site):
    page = _parse(site / "theory.html")
    mathjax = [s for s in page.scripts if "mathjax" in s.lower()]
    assert mathjax, page.scripts
    for src in mathjax:
        assert not _is_remote(src), src
        assert (site / src.split("?")[0]).is_file(), src
    fonts = list((site / "_static" / "mathjax").rglob("*.woff*"))
    assert fonts, "MathJax's fonts are not in the site"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lesson_page_shows_its_figures_and_no_error(site, path):
    html_path = site / "_notebooks" / f"{path.stem}.html"
    page = _parse(html_path)
    assert page.tracebacks == 0, f"{path.name}: an error output on the page"
    assert page.output_images, f"{path.name}: no image among the cell outputs"
    for src in page.output_images:
        assert src.startswith("data:image/") or (html_path.parent / src).is_file(), src


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lesson_page_offers_its_notebook(site, path):
    html_path = site / "_notebooks" / f"{path.stem}.html"
    links = re.findall(r'href="([^"]+\.ipynb)"', html_path.read_text(encoding="utf-8"))
    assert links, f"{path.name}: no download link"
    assert all((html_path.parent / link).is_file() for link in links), links


@pytest.mark.slow
def test_lessons_page_lists_every_lesson(site):
    page = (site / "notebooks.html").read_text(encoding="utf-8")
    for nb in NOTEBOOKS:
        assert f"_notebooks/{nb.stem}.html" in page, nb.name


@pytest.mark.slow
def test_api_page_follows_the_package_plan(site):
    # Every module once, the paper's modules first in the package docstring's reading order,
    # then the subpackages that are not the reading path.
    page = (site / "api.html").read_text(encoding="utf-8")
    order = re.findall(r'id="module-(proxnp(?:\.\w+)*)"', page)
    modules = {
        m.name
        for m in pkgutil.walk_packages(proxnp.__path__, "proxnp.")
        if not m.name.endswith("__main__")
    } | {"proxnp"}
    assert set(order) == modules, "every module on the API page, once"
    assert len(order) == len(set(order))
    reading = re.search(r"\n\s*(functional ->[^\n]*)", proxnp.__doc__).group(1).split(" -> ")
    at = [order.index(f"proxnp.{m}") for m in reading]
    assert at == sorted(at), "the reading path in the package docstring's order"
    apart = [i for i, m in enumerate(order) if m.count(".") and m.split(".")[1] in SUBPACKAGES]
    assert max(at) < min(apart), order
    assert "proxnp.prox.prox_direction" in page and "proxnp.backprop" in page


@pytest.mark.slow
def test_docstring_examples_are_code_blocks(site):
    # An indented example under a plain paragraph would be a block quote, its lines run together.
    page = _parse(site / "api.html")
    assert page.blockquotes == 0
    api = (site / "api.html").read_text(encoding="utf-8")
    # proxnp.proxprop's module docstring opens with its two example calls.
    blocks = [re.sub(r"<[^>]+>", "", b) for b in re.findall(r"<pre>(.*?)</pre>", api, re.S)]
    assert any("backprop(model" in b and "proxprop(model" in b for b in blocks), (
        "the proxprop module's examples are not a code block"
    )


@pytest.mark.slow
def test_wide_tables_wrap_inside_the_page(site):
    page = (site / "differences.html").read_text(encoding="utf-8")
    assert re.search(r'class="[^"]*pst-scrollable-table-container', page)
    css = (site / "_static" / "proxnp.css").read_text(encoding="utf-8")
    assert "proxnp.css" in page
    assert re.search(r"table td[^{]*\{[^}]*white-space:\s*normal", css)
    assert re.search(r"pst-scrollable-table-container\s*\{[^}]*overflow-x:\s*auto", css)


class _Layout(html.parser.HTMLParser):
    """Search fields (and whether each sits in the left sidebar) and the images of cell outputs."""

    def __init__(self):
        super().__init__()
        self.search_fields, self.output_images = [], []
        self._open = []  # classes of the open elements

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        inside = {c for cs in self._open for c in cs}
        if "search-button-field" in classes:
            self.search_fields.append("bd-sidebar-primary" in inside)
        if tag == "img" and "cell_output" in inside:
            self.output_images.append(attrs)
        if tag not in ("img", "br", "hr", "input", "meta", "link", "source"):
            self._open.append(classes)

    def handle_endtag(self, tag):
        if tag not in ("img", "br", "hr", "input", "meta", "link", "source") and self._open:
            self._open.pop()


def _css_rules(css):
    """{selector: declarations} of a stylesheet (comments dropped; a selector list split)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    rules = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", css):
        for selector in selectors.split(","):
            rules.setdefault(" ".join(selector.split()), "")
            rules[" ".join(selector.split())] += body
    return rules


def test_code_and_outputs_wrap_and_display_maths_scrolls(site):
    # A pre block that neither wraps nor scrolls visibly cuts a lesson's equation tags off.
    rules = _css_rules((site / "_static" / "proxnp.css").read_text(encoding="utf-8"))
    for selector in (".bd-article div.cell_input pre", ".bd-article div.cell_output pre"):
        assert re.search(r"white-space:\s*pre-wrap", rules.get(selector, "")), selector
    assert re.search(r"overflow-x:\s*auto", rules.get(".bd-article div.math", ""))
    assert re.search(r"height:\s*\d", rules.get(".bd-article div.math::-webkit-scrollbar", ""))
    page = (site / "_notebooks" / "03_proxprop_on_an_mlp.html").read_text(encoding="utf-8")
    assert "proxnp.css" in page and 'class="cell_input' in page


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lesson_figures_take_the_column_width(site, path):
    # No figure pinned to a small fixed width; the page has no right-hand sidebar taking its width.
    text = (site / "_notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
    layout = _Layout()
    layout.feed(text)
    assert layout.output_images, path.name
    for attrs in layout.output_images:
        assert "width" not in attrs and "width" not in (attrs.get("style") or ""), attrs
    assert 'class="bd-sidebar-secondary' not in text, (
        f"{path.name}: a right-hand sidebar narrows it"
    )
    rules = _css_rules((site / "_static" / "proxnp.css").read_text(encoding="utf-8"))
    assert re.search(r"max-width:\s*100%", rules.get(".bd-article div.cell_output img", ""))
    # the page's outputs say themselves that they come from the fast setting
    assert "Fast setting (PROXNP_NOTEBOOK_FAST=1)" in text, path.name


def test_every_page_has_one_search_field(site):
    for name in ("index.html", "theory.html", "_notebooks/03_proxprop_on_an_mlp.html"):
        layout = _Layout()
        layout.feed((site / name).read_text(encoding="utf-8"))
        # the header's field (a desktop and a phone variant of one field), none in the sidebar
        assert layout.search_fields and not any(layout.search_fields), (name, layout.search_fields)
        assert len(layout.search_fields) <= 2, (name, layout.search_fields)
