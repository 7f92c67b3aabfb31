"""The fast path: the same numbers as the reading path, computed faster; and the switch between them.

* :mod:`proxnp.fast.layers` -- convolution and pooling over host threads.
* :mod:`proxnp.fast.prox` -- the proximal step in the cheaper space (range-space CG, eigenbasis).
* :mod:`proxnp.fast.cpu` -- how many threads each operation gets (the thread policy), host
  threads and BLAS thread counts.

Which code runs: the fast kernels (the default) or the plain reference path.

    with proxnp.reference():         # every layer operation and proximal step in plain code
        pn.proxprop(model, loss_fn, x, y)

The reference path is the reading path (:mod:`proxnp.functional`, :mod:`proxnp.prox`):
each equation written once in NumPy/CuPy.  The fast kernels (:mod:`proxnp.fast.layers`,
:mod:`proxnp.fast.prox`) compute the same numbers, up to rounding, with the same
signatures and caches.  Layers and :func:`proxnp.proxprop` ask :func:`use_fast` which
to call.  The switch is one process-wide flag (not per thread).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_reference_only = False


def use_fast() -> bool:
    """True unless inside ``with proxnp.reference():``."""
    return not _reference_only


@contextlib.contextmanager
def reference() -> Iterator[None]:
    """Run the plain reference code inside the block (the fast kernels again after it)."""
    global _reference_only
    old, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = old
