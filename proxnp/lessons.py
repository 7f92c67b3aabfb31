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
