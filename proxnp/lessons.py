"""Sizes for the teaching notebooks: the full lesson, or a short run for automated checks.

A notebook asks for its sizes here instead of carrying a switch the reader has to skip::

    from proxnp.lessons import size
    epochs = size(30, fast=6)        # 30 when a student runs it, 6 under PROXNP_NOTEBOOK_FAST=1

Continuous integration and the documentation build set the environment variable
``PROXNP_NOTEBOOK_FAST=1``; every claim a notebook asserts must hold at both sizes.
"""

import os

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


def compare_to_flops(what, measured, counted):
    """One line setting a measured cost ratio beside its FLOP-count ratio.

    ``measured`` is a ratio of median times t_a / t_b, ``counted`` the ratio f_a / f_b of the
    same two computations' FLOP counts.  They agree when both lie on the same side of 1 (a
    computation counted dearer is measured slower).  A contradiction — for example a ProxProp
    step measured cheaper than a BackProp step although it does more work — says something
    about the measurement (a machine busy with other work, threads, caches), not about the
    method: the line then begins with ``measurement problem`` and the lesson prints it instead
    of asserting a timing.

    >>> compare_to_flops("ProxProp / BackProp", 1.3, 1.11)
    'ProxProp / BackProp: 1.11 x in FLOPs, measured 1.30 x'
    """
    line = f"{what}: {counted:.2f} x in FLOPs, measured {measured:.2f} x"
    if (measured > 1) != (counted > 1):
        line = (
            f"measurement problem: {line} -- the FLOP count says the opposite; "
            "time again on an idle machine"
        )
    return line
