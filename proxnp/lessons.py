"""Sizes for the teaching notebooks: the full lesson, or a short run for automated checks.

A notebook asks for its sizes here instead of carrying a switch the reader has to skip::

    from proxnp.lessons import size
    epochs = size(30, fast=6)        # 30 when a student runs it, 6 under PROXNP_NOTEBOOK_FAST=1

Continuous integration and the documentation build set the environment variable
``PROXNP_NOTEBOOK_FAST=1``; every claim a notebook asserts must hold at both sizes.
"""

import os
import pathlib
import re

FAST_VARIABLE = "PROXNP_NOTEBOOK_FAST"


def is_fast():
    """True when the environment variable ``PROXNP_NOTEBOOK_FAST`` is ``1``."""
    return os.environ.get(FAST_VARIABLE, "") == "1"


def size(full, fast=None):
    """``full`` for the lesson; ``fast`` (when given) if :func:`is_fast`.

    Any value works: an epoch count, a tuple of step sizes, a shape.
    """
    if fast is not None and is_fast():
        return fast
    return full


def describe_setting():
    """One line a lesson prints first: which setting runs, so a page of outputs says so itself.

    The documentation build runs the lessons in the fast setting while their text quotes the
    full lesson's numbers; this line tells a reader of the page which one the outputs are.
    """
    if is_fast():
        return (
            f"Fast setting ({FAST_VARIABLE}=1): smaller runs than the full lesson, the same checks. "
            "Where the text quotes a number of the full lesson, the outputs below differ from it."
        )
    return f"Full lesson (set {FAST_VARIABLE}=1 for the short runs of the automated checks)."


def compare_to_flops(what, measured, counted, margin=0.1):
    """One line setting a measured cost ratio beside its FLOP-count ratio.

    ``measured`` is a ratio of median times t_a / t_b, ``counted`` the ratio f_a / f_b of the
    same two computations' FLOP counts.  They agree when both lie on the same side of 1 (a
    computation counted dearer is measured slower); a count within ``margin`` of 1 (the two
    cost about the same) agrees with any measurement.  A contradiction — for example a ProxProp
    step measured cheaper than a BackProp step although it does more work — says something
    about the measurement (a machine busy with other work, threads, caches), not about the
    method: the line then begins with ``measurement problem`` and the lesson prints it instead
    of asserting a timing.

    >>> compare_to_flops("ProxProp / BackProp", 1.3, 1.11)
    'ProxProp / BackProp: 1.11 x in FLOPs, measured 1.30 x'
    """
    line = f"{what}: {counted:.2f} x in FLOPs, measured {measured:.2f} x"
    if abs(counted - 1) > margin and (measured > 1) != (counted > 1):
        line = (
            f"measurement problem: {line} -- the FLOP count says the opposite; "
            "time again on an idle machine"
        )
    return line


RESULTS = pathlib.Path(__file__).resolve().parents[1] / "bench" / "RESULTS.md"


def bench_ratios(path=RESULTS):
    """The step-time ratios of the newest entry of ``bench/RESULTS.md`` that has step tables
    (``### MLP ...`` / ``### ConvNet ...`` with a ``ratio`` column), read at run time.

    A lesson that quotes the benchmarks reads them here instead of copying numbers that drift.
    Returns ``(heading, ratios)``: the entry's ``##`` heading (date and machine) and a dict
    ``{(network, step): (ratios, versus)}`` with ``network`` ``"MLP"`` or ``"ConvNet"`` (the
    ``###`` table it comes from), ``step`` the table's first column (``"ProxProp exact
    direction"``), one ratio per run and what they are ratios to (``"BackProp direction"``).
    ``None`` when the file is not there (proxnp installed without its repository).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    entries = re.split(r"^## ", path.read_text(encoding="utf-8"), flags=re.M)[1:]
    if not entries:
        raise ValueError(f"{path}: no dated entry ('## date — machine')")
    for entry in entries:
        heading, ratios = entry.splitlines()[0].strip(), _step_ratios(entry)
        if ratios:
            return heading, ratios
    raise ValueError(f"{path}: no entry with step tables ('### MLP' or '### ConvNet')")


def _step_ratios(entry):
    """{(network, step): (ratios, versus)} of one entry's step tables."""
    ratios = {}
    for table in re.split(r"^### ", entry, flags=re.M)[1:]:
        network = table.split()[0]
        if network not in ("MLP", "ConvNet"):
            continue
        header = None
        for line in table.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not line.startswith("|") or set("".join(cells)) <= set("-: "):
                continue
            if header is None:
                header = [c.split(",")[0] for c in cells]
                continue
            if "ratio" in header and cells[header.index("ratio")].strip("* "):
                runs = cells[header.index("ratio")].replace("*", "").split("/")
                versus = cells[header.index("vs")] if "vs" in header else ""
                ratios[network, cells[0]] = ([float(r) for r in runs], versus)
    return ratios
